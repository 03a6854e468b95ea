"""Benchmark plain generate() vs prompt lookup vs a draft head on a tiny random target (CPU, seconds).

The same runner as `fspad-hf bench` (`fspad_hf.evaluation.benchmark.run_benchmark`): methods interleaved question by
question, multi-turn questions answered turn by turn, tau from target forward counts, identity to the
baseline checked (greedy). Questions are inline and the chat tokenizer is trained in code, so nothing is
downloaded. The head is untrained, so expect tau close to 1 and no speed-up: the point is the pipeline
and the output layout (JSON + Markdown + per-turn JSONL), read back with the `evaluate` metric.

    python examples/benchmark_tiny.py [--output runs/benchmark_tiny/results.json] [--max_new_tokens 24]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import fspad_hf  # noqa: F401
from fspad_hf import FSPADDraftModel
from fspad_hf.evaluation.benchmark import Method, markdown_table, run_benchmark

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = [  # Spec-Bench layout: question_id, category, turns
    {"question_id": 1, "category": "writing", "turns": ["Write a haiku about a quick brown fox.",
                                                         "Now make it about a lazy dog."]},
    {"question_id": 2, "category": "qa", "turns": ["Why do foxes jump over dogs?"]},
    {"question_id": 3, "category": "summarization", "turns": ["Summarize: the quick brown fox jumps over the lazy dog."]},
]


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-process (any text is encodable) with a ChatML template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 5, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    out.chat_template = CHATML
    return out


def make_target(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    target = LlamaForCausalLM(cfg).eval()
    target.generation_config.eos_token_id = None  # fixed-length answers: comparable timings
    target.generation_config.pad_token_id = None
    return target


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=None, help="results JSON (default: in a temporary folder)")
    p.add_argument("--max_new_tokens", type=int, default=24)
    a = p.parse_args()
    torch.set_num_threads(1)
    output = Path(a.output or Path(tempfile.mkdtemp(prefix="benchmark_tiny-")) / "results.json")
    tokenizer = chat_tokenizer()
    target = make_target(len(tokenizer))
    head = FSPADDraftModel.from_target(target, tokenizer, tree_total_tokens=16, tree_depth=4, tree_top_k=4)
    methods = [
        Method("baseline"),
        Method("pld-4", {"prompt_lookup_num_tokens": 4}),
        Method("fspad", {"assistant_model": head}, head),
    ]
    summary = run_benchmark(target, tokenizer, methods, QUESTIONS, output, max_new_tokens=a.max_new_tokens,
                            config={"target": "tiny-random-llama", "dtype": "float32"})
    print(markdown_table(summary))
    fspad = summary["methods"]["fspad"]["overall"]
    print(f"fspad: tau {fspad['tau']:.2f}, identical to baseline: {fspad['identical_to_baseline']}")
    # The same numbers through the packaged `evaluate` metric (loaded from a local folder, offline):
    from fspad_hf.evaluation.metrics import load_metric, load_records, records_to_inputs

    scores = load_metric(keep_in_memory=True).compute(
        **records_to_inputs(load_records(output.with_suffix(".partial.jsonl")), method="fspad"))
    print(f"evaluate metric fspad_speculative: tau {scores['tau']:.2f}, exact_match {scores['exact_match']:.2f}, "
          f"speedup {scores['speedup']:.2f}x")
    print(f"results: {output} (+ {output.with_suffix('.md').name}, {output.with_suffix('.partial.jsonl').name})")
    if not fspad["identical_to_baseline"]:
        raise SystemExit("MISMATCH: tree decoding changed the output")


if __name__ == "__main__":
    main()
