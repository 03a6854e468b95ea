"""What the benchmark scripts share: the target / head / dtype / threads options, and loading them."""

from __future__ import annotations

import argparse

import torch

import fspad_hf


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--target", default="smollm2", help="a target name from fspad_hf.targets")
    ap.add_argument("--head", default="smollm2-fspad", help="a shipped head name or a head folder")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set OMP_NUM_THREADS to the same)")
    ap.add_argument("--max_new_tokens", type=int, default=64)


def load_models(args: argparse.Namespace):
    """-> (target, tokenizer, head), the head in the target's dtype, torch at args.threads threads."""
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    target, tokenizer = fspad_hf.load_target(args.target, dtype=dtype)
    return target, tokenizer, fspad_hf.FSPADDraftModel.from_pretrained(args.head).to(dtype)
