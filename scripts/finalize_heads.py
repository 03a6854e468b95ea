"""Turn a training checkpoint into a shipped head: bf16 weights, tuned tree defaults, filled model card.

    python scripts/finalize_heads.py --checkpoint runs/smollm2-fspad/checkpoint-800 --name smollm2-fspad \
        --benchmark benchmarks/results/smollm2-bf16.json --tree 12,4,4
"""

import argparse
import json
from pathlib import Path

import torch

import fspad_hf  # noqa: F401
from fspad_hf import FSPADDraftModel
from fspad_hf.head.shipped import heads_dir
from fspad_hf.sharing.hub import build_model_card
from fspad_hf.head.loading import INT8_WEIGHTS_NAME
from fspad_hf.head.storage import save_int8


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True, help="folder name under src/fspad_hf/heads/")
    p.add_argument("--benchmark", default=None, help="fspad-hf bench JSON for the card")
    p.add_argument("--tree", default=None, help="total,depth,top_k defaults stored in the config")
    p.add_argument("--data", default="1,500 self-distilled SmolLM2 answers to ShareGPT first turns 0-2399 + raw ShareGPT "
                   "first turns 2400-4399 (offline bf16 target features)")
    p.add_argument("--command", default="bash scripts/smollm2_heads.sh main", help="the command that trained it")
    p.add_argument("--int8", action="store_true", help="store the weights as int8 (fspad_hf.head.storage; ~half of bf16)")
    a = p.parse_args()
    ckpt = Path(a.checkpoint)
    head = FSPADDraftModel.from_pretrained(ckpt).to(torch.bfloat16)
    if a.tree:
        head.config.tree_total_tokens, head.config.tree_depth, head.config.tree_top_k = (int(x) for x in a.tree.split(","))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss" in h]
    training = {
        "data": a.data,
        "max_steps": state["global_step"],
        "learning_rate": max((h.get("learning_rate", 0.0) for h in logs), default=None),
        "per_device_train_batch_size": state.get("train_batch_size", 4),
        "train_loss": logs[-1]["loss"] if logs else None,
        "examples": state["global_step"] * state.get("train_batch_size", 4),
        "eval_top1_per_position": next(([round(h[k], 4) for k in sorted(h) if k.startswith("eval_acc_p")]
                                        for h in reversed(state["log_history"]) if "eval_acc_p1" in h), None),
        "seed": 0,
        "hardware": f"1 CPU core, no GPU (command: {a.command})",
    }
    out = heads_dir() / a.name
    for stale in ("model.safetensors", INT8_WEIGHTS_NAME):  # re-finalising may switch formats
        (out / stale).unlink(missing_ok=True)
    if a.int8:
        save_int8(head, out)
        head = FSPADDraftModel.from_pretrained(out)  # the card describes what ships (dequantized weights)
    else:
        head.save_pretrained(out)
    storage = ("stored as int8 with one scale per row in `model.int8.safetensors`, dequantized on load"
               if a.int8 else None)
    build_model_card(head, training, a.benchmark, weights_storage=storage).save(out / "README.md")
    print(f"wrote {out}: {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
