"""Turn a training checkpoint into a shipped head: bf16 weights, tuned tree defaults, filled model card.

    python scripts/finalize_heads.py --checkpoint runs/smollm2-fspad/checkpoint-800 --name smollm2-fspad \
        --benchmark benchmarks/results/smollm2-bf16.json --tree 12,4,4

A head of a head group (`--method eagle2,fspad`) is the group checkpoint's subfolder
(`runs/long/pair/checkpoint-12000/fspad`): the trainer state is read from the group folder and the
per-head metrics (`eval_fspad_acc_p1`, `fspad_...`) from its log.
"""

import argparse
import json
from pathlib import Path

import torch

import fspad_hf  # noqa: F401
from fspad_hf import FSPADDraftModel
from fspad_hf.head.shipped import heads_dir
from fspad_hf.sharing.hub import build_model_card
from fspad_hf.head.loading import INT8_INDEX_NAME, INT8_WEIGHTS_NAME
from fspad_hf.head.storage import remove_weights, save_int8
from fspad_hf.training.checkpoints import GROUP_MANIFEST_NAME


def heldout_tau(path: str | None, method: str | None) -> str | None:
    """'2.25 (fp32, static 8/3/4, 40 questions, 64 new tokens)' from a held-out bench JSON, or None."""
    if path is None:
        return None
    summary = json.loads(Path(path).read_text())
    methods = {k: v for k, v in summary["methods"].items() if k != "baseline"}
    if method is None and len(methods) != 1:
        raise SystemExit(f"--heldout {path} holds {sorted(methods)}: which one is this head? Pass a file with one head.")
    name = method or next(iter(methods))
    o = methods[name]["overall"]
    c = summary["config"]
    spec = next((h for h in c.get("heads", []) if h.startswith(f"{name}=")), "")
    tree = spec.rsplit("@", 1)[-1].replace(",", "/") if "@" in spec else "the head's default"
    return f"{o['tau']:.3f} ({c['dtype']}, tree {tree}, {c['questions']} questions, {c['max_new_tokens']} new tokens)"


def checkpoint_metrics(ckpt: Path) -> dict:
    """This head's training numbers from its checkpoint's trainer state.

    `ckpt` is a single-head checkpoint (holds trainer_state.json) or one head's subfolder of a head-group
    checkpoint (its parent holds trainer_state.json and heads.json; the group logs each head's metrics under
    `<head>_...` and its "loss" is the sum over heads, so the head's own terms are reported instead)."""
    in_group = not (ckpt / "trainer_state.json").is_file() and (ckpt.parent / GROUP_MANIFEST_NAME).is_file()
    state_file = (ckpt.parent if in_group else ckpt) / "trainer_state.json"
    if not state_file.is_file():
        raise SystemExit(f"{ckpt} is not a training checkpoint: no trainer_state.json in it (or, for a head of a "
                         f"head group, in its parent next to {GROUP_MANIFEST_NAME}). Pass checkpoint-N or checkpoint-N/<head>.")
    state = json.loads(state_file.read_text())
    prefix = f"{ckpt.name}_" if in_group else ""
    logs = [h for h in state["log_history"] if "loss" in h]
    last = next((h for h in reversed(logs) if f"{prefix}logit_loss_p1" in h), None)
    eval_key = f"eval_{prefix}acc_p"
    return {
        "in_group": in_group,
        "max_steps": state["global_step"],
        "batch_size": state.get("train_batch_size", 4),
        "learning_rate": max((h.get("learning_rate", 0.0) for h in logs), default=None),
        "train_loss": (f"feature {last[prefix + 'feature_loss_p1']:.3f}, logit {last[prefix + 'logit_loss_p1']:.3f} "
                       f"(position 1)" if in_group and last else (logs[-1]["loss"] if logs else None)),
        # position order by number, not by string: p10 after p9
        "eval_top1_per_position": next(([round(h[k], 4) for k in sorted((k for k in h if k.startswith(eval_key)),
                                                                          key=lambda k: int(k[len(eval_key):]))]
                                        for h in reversed(state["log_history"]) if f"{eval_key}1" in h), None),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True, help="folder name under src/fspad_hf/heads/")
    p.add_argument("--benchmark", default=None, help="fspad-hf bench JSON for the card")
    p.add_argument("--benchmark_note", default=None, help="what the --benchmark run measured, shown above its tables")
    p.add_argument("--tree", default=None, help="total,depth,top_k defaults stored in the config")
    p.add_argument("--data", default="1,500 self-distilled SmolLM2 answers to ShareGPT first turns 0-2399 + raw ShareGPT "
                   "first turns 2400-4399 (offline bf16 target features)")
    p.add_argument("--command", default="bash scripts/smollm2_heads.sh main", help="the command that trained it")
    p.add_argument("--card_only", action="store_true",
                   help="rebuild only the README.md of the shipped head --name from this checkpoint's record (after a "
                        "card template change); its weights and config stay as they are")
    p.add_argument("--int8", action="store_true", help="store the weights as int8 (fspad_hf.head.storage; ~half of bf16)")
    p.add_argument("--lr_schedule", default=None, help="the learning-rate schedule, in words, for the card")
    p.add_argument("--tokens", type=int, default=None, help="training tokens seen, for the card")
    p.add_argument("--heldout", default=None,
                   help="fspad-hf bench JSON on held-out questions: the card records this head's tau from it")
    a = p.parse_args()
    ckpt = Path(a.checkpoint)
    metrics = checkpoint_metrics(ckpt)  # before loading: a wrong folder fails with its own message
    out = heads_dir() / a.name
    if a.card_only and not (out / "config.json").is_file():
        raise SystemExit(f"--card_only: no shipped head at {out}; finalize it without --card_only first.")
    if a.card_only:  # the shipped head as it is: its weights, storage and tree are left alone
        head = FSPADDraftModel.from_pretrained(out)
    else:
        head = FSPADDraftModel.from_pretrained(ckpt).to(torch.bfloat16)
        if a.tree:
            head.config.tree_total_tokens, head.config.tree_depth, head.config.tree_top_k = (int(x) for x in a.tree.split(","))
    training = {
        "data": a.data,
        "max_steps": metrics["max_steps"],
        "learning_rate": metrics["learning_rate"],
        "lr_schedule": a.lr_schedule,
        "tokens": a.tokens,
        "per_device_train_batch_size": metrics["batch_size"],
        "train_loss": metrics["train_loss"],
        "examples": metrics["max_steps"] * metrics["batch_size"],
        "eval_top1_per_position": metrics["eval_top1_per_position"],
        "heldout_tau": heldout_tau(a.heldout, ckpt.name if metrics["in_group"] else None),
        "seed": 0,
        "hardware": f"1 CPU core, no GPU (command: {a.command})",
    }
    if not a.card_only:
        if out.is_dir():
            remove_weights(out)  # re-finalising may switch formats
        if a.int8:
            save_int8(head, out)
            head = FSPADDraftModel.from_pretrained(out)  # the card describes what ships (dequantized weights)
        else:
            head.save_pretrained(out)
    sharded = (out / INT8_INDEX_NAME).is_file()
    int8 = sharded or (out / INT8_WEIGHTS_NAME).is_file()  # what ships, also when only the card is rebuilt
    storage = ("stored as int8 with one scale per row in `model.int8" + ("-*-of-*" if sharded else "")
               + ".safetensors`" + (" (shards under 40 MiB, listed by its index)" if sharded else "")
               + ", dequantized on load" if int8 else None)
    build_model_card(head, training, a.benchmark, weights_storage=storage,
                     benchmark_note=a.benchmark_note).save(out / "README.md")
    print(f"wrote {out}: {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
