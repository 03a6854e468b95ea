"""Train an FSPAD head end to end on CPU in a couple of minutes (tiny random target, no downloads).

Pipeline: the target writes its own text (self-distillation: greedy continuations of random prompts),
the head is trained on it with `FSPADTrainer` (online features: the frozen target runs inside each
step), then the mean accepted length tau of the untrained and trained heads is compared through the
real generation path. Works under `accelerate launch --num_processes 2 --cpu examples/train_tiny.py`.

    python examples/train_tiny.py [--max_steps 300] [--method fspad|eagle2|poss] [--output_dir runs/tiny]
"""

import argparse
import logging

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fspad_hf  # noqa: F401
from fspad_hf import FSPADDraftModel
from fspad_hf.training.data import ChatDataset
from fspad_hf.training.distill import greedy_continuations
from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments, finish_distributed

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("train_tiny")

METHODS = {  # name -> head config overrides, unroll steps
    "eagle2": (dict(feature_sampling=False, partial_alignment=False), 1),
    "fspad": (dict(feature_sampling=True, partial_alignment=True), 1),
    "poss": (dict(feature_sampling=True, partial_alignment=True, num_draft_layers=2, positions_per_layer=2), 4),
}


def make_target(vocab=256):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    return LlamaForCausalLM(cfg).eval()


def self_distilled(target, n, prompt_len=8, new=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, target.config.vocab_size, (1, prompt_len), generator=g) for _ in range(n)]
    return greedy_continuations(target, prompts, new)


def mean_tau(target, head, items, prompt_len=8, new=40):
    taus = []
    for ex in items:
        target.generate(torch.tensor([ex["input_ids"][:prompt_len]]), assistant_model=head, max_new_tokens=new, do_sample=False)
        taus.append(head.last_generation_stats.mean_accepted_length)
    return sum(taus) / len(taus)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=sorted(METHODS), default="fspad")
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--output_dir", default="runs/tiny")
    p.add_argument("--quick", action="store_true", help="fewer examples (used by the test suite)")
    a = p.parse_args()
    torch.set_num_threads(1)
    target = make_target()
    data = self_distilled(target, 24 if a.quick else 96)
    train, held_out = data[: len(data) * 3 // 4], data[len(data) * 3 // 4 :]
    overrides, unroll = METHODS[a.method]
    torch.manual_seed(1)
    head = FSPADDraftModel.from_target(target, tree_total_tokens=16, tree_depth=5, tree_top_k=4, **overrides)
    args = FSPADTrainingArguments(
        output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=8, learning_rate=3e-3,
        warmup_steps=min(20, a.max_steps // 10), logging_steps=max(1, a.max_steps // 10), save_strategy="steps",
        save_steps=max(10, a.max_steps // 3), unroll_steps=unroll, seed=0, use_cpu=True, disable_tqdm=True,
    )
    trainer = FSPADTrainer(model=head, args=args, target=target, train_dataset=ChatDataset(train))
    log.info("method=%s world_size=%d params=%d", a.method, args.world_size, sum(p.numel() for p in head.parameters()))
    before = mean_tau(target, head, held_out) if trainer.is_world_process_zero() else None
    trainer.train()
    if trainer.is_world_process_zero():
        after = mean_tau(target, head, held_out)
        head.save_pretrained(f"{a.output_dir}/head")
        log.info("tau on held-out self-generated text: untrained %.2f -> trained %.2f", before, after)
    finish_distributed()  # the other ranks wait here for rank 0's measuring and saving


if __name__ == "__main__":
    main()
