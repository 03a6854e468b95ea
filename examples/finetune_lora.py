"""Fine-tune a draft head with LoRA adapters (peft), then merge them: CPU, tiny random target, ~20 s.

A head is taken from a folder (here: saved a moment ago; in practice a shipped or downloaded head),
wrapped with `peft.get_peft_model`, fine-tuned for a few steps with `FSPADTrainer` on text the target
wrote itself, used for generation with the live adapters, merged with `merge_and_unload()`, and used
again. Every output is checked against plain `generate()` (tree decoding is lossless).

    python examples/finetune_lora.py [--max_steps 40] [--output_dir runs/finetune_lora]
"""

import argparse
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import fspad_hf  # noqa: F401  (assistant_model=<head> route, also for PEFT-wrapped heads)
from fspad_hf import FSPADDraftModel
from fspad_hf.training.data import ChatDataset
from fspad_hf.training.distill import greedy_continuations
from fspad_hf.head.modeling import unwrap_head
from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments


def make_target():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    return LlamaForCausalLM(cfg).eval()


def self_distilled(target, n, prompt_len=8, new=40, seed=0):
    """The target's greedy continuations of random prompts; loss on the generated part only."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, target.config.vocab_size, (1, prompt_len), generator=g) for _ in range(n)]
    return greedy_continuations(target, prompts, new)


def check(target, drafter, prompts, new=30):
    """Generate with `drafter`, assert identity with plain generate(), return the mean tau."""
    taus = []
    for prompt in prompts:
        plain = target.generate(prompt, max_new_tokens=new, do_sample=False)
        fast = target.generate(prompt, assistant_model=drafter, max_new_tokens=new, do_sample=False)
        if not torch.equal(fast, plain):
            raise SystemExit("MISMATCH: tree decoding changed the output")
        taus.append(unwrap_head(drafter).last_generation_stats.mean_accepted_length)
    return sum(taus) / len(taus)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--output_dir", default=None, help="trainer output (default: a temporary folder)")
    a = p.parse_args()
    torch.set_num_threads(1)
    out_dir = a.output_dir or tempfile.mkdtemp(prefix="finetune_lora-")
    target = make_target()
    data = self_distilled(target, 20)
    train, held_out = data[:16], data[16:]
    prompts = [torch.tensor([ex["input_ids"][:8]]) for ex in held_out]

    # "Take a head": save a head and load it back, as you would a shipped or downloaded one.
    torch.manual_seed(1)
    FSPADDraftModel.from_target(target, tree_total_tokens=16, tree_depth=5, tree_top_k=4).save_pretrained(f"{out_dir}/base")
    head = FSPADDraftModel.from_pretrained(f"{out_dir}/base").bind_target(target)
    tau_base = check(target, head, prompts)

    lora = get_peft_model(head, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "fc"]))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    print(f"LoRA: {trainable} trainable of {sum(p.numel() for p in head.parameters())} head parameters")
    args = FSPADTrainingArguments(output_dir=out_dir, max_steps=a.max_steps, per_device_train_batch_size=8,
                                  learning_rate=1e-2, warmup_steps=4, logging_steps=max(1, a.max_steps // 4),
                                  save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, report_to=[])
    FSPADTrainer(model=lora, args=args, target=target, train_dataset=ChatDataset(train)).train()

    tau_adapter = check(target, lora, prompts)  # generate with live adapters (PEFT wrapper as assistant_model)
    merged = lora.merge_and_unload()
    tau_merged = check(target, merged, prompts)
    merged.save_pretrained(f"{out_dir}/merged")
    print(f"tau: base head {tau_base:.2f} -> with LoRA adapters {tau_adapter:.2f} -> merged {tau_merged:.2f}")
    print(f"identical to plain generate(): True (adapters and merged head); merged head saved to {out_dir}/merged")


if __name__ == "__main__":
    main()
