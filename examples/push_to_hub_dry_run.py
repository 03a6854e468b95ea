"""Share a head: model card + weights + `custom_generate/`, written locally (dry run, nothing uploaded).

Builds a head for a tiny random target, renders its model card with a (made-up) benchmark summary and
training record, writes the repo folder with `push_head(..., dry_run_dir=...)`, prints the file tree
and the card's metadata, then loads the folder through transformers' own `custom_generate` hook (the
route for users without fspad-hf) and checks the output equals plain `generate()`.

    python examples/push_to_hub_dry_run.py [--output_dir runs/push_dry_run]
    # for real: fspad-hf push --head runs/fspad/final --repo_id you/my-head --benchmark results.json
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fspad_hf  # noqa: F401
from fspad_hf import FSPADDraftModel
from fspad_hf.sharing.hub import build_model_card, push_head

FAKE_BENCHMARK = {  # the layout `fspad-hf bench` writes (numbers made up for the demo)
    "config": {"target": "tiny-random-llama", "dtype": "float32", "machine": "Linux-x86_64", "torch": torch.__version__,
               "threads": 2, "questions": 2, "max_new_tokens": 64, "temperature": 0.0},
    "methods": {
        "baseline": {"overall": {"tau": 1.0, "speedup": 1.0, "tokens_per_s": 40.0, "identical_to_baseline": True},
                     "per_category": {"coding": {"tau": 1.0, "speedup": 1.0}, "qa": {"tau": 1.0, "speedup": 1.0}}},
        "fspad": {"overall": {"tau": 2.6, "speedup": 1.9, "tokens_per_s": 76.0, "identical_to_baseline": True},
                  "per_category": {"coding": {"tau": 3.1, "speedup": 2.2}, "qa": {"tau": 2.2, "speedup": 1.6}}},
    },
}
TRAINING = {"data": "self-distilled random prompts (demo)", "examples": 96, "tokens": 4608, "max_steps": 300,
            "learning_rate": 3e-3, "per_device_train_batch_size": 8}


def print_tree(root: Path) -> None:
    print(f"{root}/")
    for path in sorted(root.rglob("*")):
        depth = len(path.relative_to(root).parts)
        size = f"  ({path.stat().st_size:,} bytes)" if path.is_file() else "/"
        print("    " * depth + path.name + size)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=None, help="dry-run folder (default: a temporary folder)")
    p.add_argument("--repo_id", default="your-name/tiny-llama-fspad-head")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)).eval()
    target.name_or_path = "tiny-random-llama"
    head = FSPADDraftModel.from_target(target, tree_total_tokens=16, tree_depth=4, tree_top_k=4)

    card = build_model_card(head, TRAINING, FAKE_BENCHMARK, base_model_license="apache-2.0", repo_id=a.repo_id,
                            default_draft_model=a.repo_id)
    folder = Path(a.output_dir or tempfile.mkdtemp(prefix="push_dry_run-")) / a.repo_id.split("/")[-1]
    result = push_head(head, a.repo_id, card=card, dry_run_dir=folder)
    print(f"dry run for {result.repo_id}: {len(result.files)} files, nothing uploaded")
    print_tree(folder)
    print("card metadata:", card.data.to_dict())

    # What a user without fspad-hf runs (here on the local folder; on the Hub: custom_generate=repo_id).
    prompt = torch.randint(0, 256, (1, 10))
    plain = target.generate(prompt, max_new_tokens=24, do_sample=False)
    remote = target.generate(prompt, custom_generate=str(folder), trust_remote_code=True, draft_model=str(folder),
                             max_new_tokens=24, do_sample=False)
    print("custom_generate from the repo folder identical to plain generate():", torch.equal(remote, plain))
    if not torch.equal(remote, plain):
        raise SystemExit("MISMATCH: custom_generate changed the output")


if __name__ == "__main__":
    main()
