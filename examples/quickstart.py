"""Quick start: tree speculative decoding with an FSPAD head inside stock `generate()`.

Runs anywhere in seconds (tiny randomly initialised target, no downloads). With a random head most
drafts are rejected, so there is no speed-up here; the point is the API and the losslessness check.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fspad_hf  # registers the "fspad" model type and the assistant_model=<head> route
from fspad_hf import FSPADDraftModel

torch.manual_seed(0)
target = LlamaForCausalLM(
    LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
).eval()

# A randomly initialised FSPAD head sized for this target (FS + PAD on; EAGLE-2 would be
# feature_sampling=False, partial_alignment=False; PosS: num_draft_layers=4, positions_per_layer=2).
head = FSPADDraftModel.from_target(target, tree_total_tokens=16, tree_depth=4, tree_top_k=4)

prompt = torch.randint(0, 256, (1, 12))
plain = target.generate(prompt, max_new_tokens=48, do_sample=False)
fast = target.generate(prompt, assistant_model=head, max_new_tokens=48, do_sample=False)

print("generated:", fast[0, prompt.shape[1]:].tolist())
print("identical to plain generate():", torch.equal(fast, plain))
stats = head.last_generation_stats.summary()
print(f"rounds={stats['rounds']} tau={stats['tau']:.2f} draft_ms/round={stats['draft_ms_per_round']:.1f} "
      f"verify_ms/round={stats['verify_ms_per_round']:.1f}")

# Per-call tree settings, and the patch-free transformers route:
alt = target.generate(prompt, custom_generate=fspad_hf.tree_generate, draft_model=head,
                      tree_total_tokens=8, tree_depth=3, max_new_tokens=48, do_sample=False)
assert torch.equal(alt, plain)
# Sampling works too (same distribution as plain sampling):
sampled = target.generate(prompt, assistant_model=head, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=16)
print("sampled:", sampled[0, prompt.shape[1]:].tolist())
if not torch.equal(fast, plain):
    raise SystemExit("MISMATCH: tree decoding changed the output")
