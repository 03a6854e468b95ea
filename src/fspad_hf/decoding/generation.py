"""Tree speculative decoding inside `generate()`.

Two routes reach `tree_generate`:
- `target.generate(ids, assistant_model=head, ...)` after `import fspad_hf` (see `route.py`);
- `target.generate(ids, custom_generate=fspad_hf.tree_generate, draft_model=head, ...)`, the
  documented, patch-free transformers hook. Without `draft_model` but with `retrieval_branches >= 1`
  it drafts retrieval-only trees (head-free mode, decoding/retrieval.py).
"""

from __future__ import annotations

import logging
import time

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.cache_utils import DynamicCache
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from ..head.target_parts import decoder_of, target_logits, text_config_of
from .cache import compact_cache
from ..compat import cache_kwargs, generate_output, user_caches
from .drafter import TreeDrafter
from .retrieval import RetrievalDrafter
from .settings import TreeSettings
from ..head.modeling import FSPADDraftModel
from .stats import GenerationStats
from ..masks import tree_additive_mask
from .tree import DraftTree
from .verification import accept, process_tree_scores, target_choices

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- input checks
def validate_request(model, input_ids: torch.LongTensor, generation_config: GenerationConfig, model_kwargs: dict) -> None:
    """Clear errors for what tree decoding does not support (each names the fix)."""
    if (generation_config.num_beams or 1) > 1:
        raise ValueError("FSPAD tree decoding does not support beam search "
                         f"(num_beams={generation_config.num_beams}); use num_beams=1 (greedy or sampling).")
    if (generation_config.num_return_sequences or 1) > 1:
        raise ValueError("FSPAD tree decoding returns one sequence "
                         f"(num_return_sequences={generation_config.num_return_sequences}); call generate() several "
                         "times with do_sample=True instead.")
    if model_kwargs.get("inputs_embeds") is not None:
        raise ValueError("FSPAD tree decoding works on token ids and would ignore inputs_embeds (the output would "
                         "differ from plain generate()). Pass input_ids only, or drop assistant_model to generate "
                         "from embeddings.")
    if generation_config.return_dict_in_generate and (
        generation_config.output_attentions or generation_config.output_hidden_states
    ):
        raise ValueError("FSPAD tree decoding cannot return per-token attentions or hidden states (output_attentions "
                         "/ output_hidden_states): the target runs one forward per tree. Drop them, or drop "
                         "assistant_model.")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("FSPAD tree decoding supports batch size 1 only, got input_ids of shape "
                         f"{tuple(input_ids.shape)}. Call generate() once per prompt, or drop assistant_model for "
                         "batched plain generation.")
    if input_ids.shape[1] == 0:
        raise ValueError("FSPAD tree decoding needs a non-empty prompt (input_ids has length 0).")
    vocab = getattr(text_config_of(model), "vocab_size", None)
    low, high = int(input_ids.min()), int(input_ids.max())
    if vocab and (low < 0 or high >= vocab):
        raise ValueError(f"input_ids hold token ids outside the target's vocabulary [0, {vocab}) (min {low}, max "
                         f"{high}); tokenize the prompt with the target's own tokenizer.")
    if generation_config.cache_implementation not in (None, "dynamic"):
        raise ValueError("FSPAD tree decoding needs a dynamic cache, got "
                         f"cache_implementation='{generation_config.cache_implementation}'. Drop cache_implementation "
                         "(static caches cannot drop rejected tree tokens).")
    for name, past in user_caches(model_kwargs):
        if not isinstance(past, DynamicCache):
            raise ValueError(f"FSPAD tree decoding needs a DynamicCache, got {type(past).__name__} (passed as "
                             f"`{name}`). Do not pass a cache: static, sliding, quantized or offloaded caches cannot "
                             "drop rejected tree tokens.")
        if past.get_seq_length() > 0:
            raise ValueError(f"FSPAD tree decoding starts from an empty cache, but `{name}` already holds "
                             f"{past.get_seq_length()} positions. Do not pass a filled cache: pass the whole text as "
                             "input_ids instead.")
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        raise ValueError("FSPAD tree decoding does not support padded prompts (attention_mask has zeros).")
    if model.config.is_encoder_decoder:
        raise ValueError("FSPAD tree decoding supports decoder-only causal LMs only.")
    if decoder_of(model).config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError("FSPAD tree decoding needs attn_implementation 'sdpa' or 'eager' (arbitrary tree masks), "
                         f"got '{decoder_of(model).config._attn_implementation}'. Load the target with "
                         "attn_implementation='sdpa'.")


# ---------------------------------------------------------------------------- target side
def _mask_layer_types(cfg) -> dict[str, int | None]:
    """Attention layer types of the target and their sliding window (None = full attention)."""
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False:
        window = None
    types = getattr(cfg, "layer_types", None)
    if types:
        return {t: (window if "sliding" in t else None) for t in sorted(set(types))}
    return {"sliding_attention" if window else "full_attention": window}


def tree_mask(cfg, tree: DraftTree, context_len: int, positions: torch.LongTensor, dtype: torch.dtype):
    """Additive tree mask for the target: one tensor, or a dict per layer type for hybrid models."""
    masks = {
        layer_type: tree_additive_mask(tree.ancestors, context_len, dtype, positions, window)
        for layer_type, window in _mask_layer_types(cfg).items()
    }
    return next(iter(masks.values())) if len(masks) == 1 else masks


def target_forward(model, ids: torch.LongTensor, cache: DynamicCache, attention_mask=None, position_ids=None,
                   last_row_only: bool = False, feature_layers: tuple[int, ...] | None = None):
    """One target forward: (head features, float32 logits `[T, V]`, or `[1, V]` for the last row only: the
    prefill needs no logits for the prompt, as in plain generate()).

    Head features: the post-final-norm state `[1, T, H]`; with `feature_layers` (an EAGLE-3 head's
    `target_feature_layers`), the outputs of those decoder layers concatenated in that order `[1, T, k*H]`,
    caught by forward hooks during this same forward (no second pass). Logits always come from the
    post-final-norm state.
    """
    decoder = decoder_of(model)
    caught: dict[int, torch.Tensor] = {}  # layer index -> its output hidden state (a tensor, or a tuple's first item)
    hooks = [decoder.layers[i].register_forward_hook(
        lambda module, args, out, i=i: caught.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i in set(feature_layers or ())]
    try:
        out = decoder(
            input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **cache_kwargs(cache)
        )
    finally:
        for hook in hooks:
            hook.remove()
    final = out.last_hidden_state
    rows = final[0, -1:] if last_row_only else final[0]
    features = torch.cat([caught[i] for i in feature_layers], dim=-1) if feature_layers else final  # [1, T, k*H]
    return features, target_logits(model, rows).float()


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


# ---------------------------------------------------------------------------- the loop
def vector_stop_rule(stopping_criteria, device) -> tuple[int | None, torch.Tensor | None] | None:
    """(max_length, eos ids `[E]`) when every criterion is transformers' `MaxLengthCriteria` / `EosTokenCriteria`
    (exact types: their stop point in a run of new tokens is found in one vectorised step); None when any other
    criterion (StopStringCriteria, MaxTimeCriteria, a custom one) must be called token by token."""
    criteria = list(stopping_criteria or ())
    if not {type(c) for c in criteria} <= {MaxLengthCriteria, EosTokenCriteria}:
        return None
    eos = [torch.as_tensor(c.eos_token_id).flatten() for c in criteria if type(c) is EosTokenCriteria]
    max_length = min((c.max_length for c in criteria if type(c) is MaxLengthCriteria), default=None)
    return max_length, torch.cat(eos).to(device) if eos else None


def _emit(new_tokens, input_ids, stopping_criteria, row_scores, rule=None) -> tuple[torch.LongTensor, int, bool]:
    """Append `new_tokens` `[n]`, stopping exactly where generate() would; returns (ids, n_kept, done).

    With a `rule` (`vector_stop_rule`): the max_length cut from the lengths, the first EOS with one host read,
    one `cat`. Without: tokens are appended one at a time and every criterion is called, as generate() does.
    """
    if rule is None:
        for i in range(new_tokens.shape[0]):
            input_ids = torch.cat([input_ids, new_tokens[i : i + 1][None]], dim=1)
            if bool(stopping_criteria(input_ids, row_scores[i : i + 1]).any()):
                return input_ids, i + 1, True
        return input_ids, new_tokens.shape[0], False
    (max_length, eos), length, keep = rule, input_ids.shape[1], new_tokens.shape[0]
    if max_length is not None:  # generate() stops at the first token that brings the length to max_length
        keep = min(keep, max(1, max_length - length))
    done = max_length is not None and length + keep >= max_length
    before = keep if eos is None else int((torch.isin(new_tokens[:keep], eos).cumsum(0) == 0).sum())  # before EOS
    keep, done = (before + 1, True) if before < keep else (keep, done)
    return torch.cat([input_ids, new_tokens[None, :keep]], dim=1), keep, done


def run_tree_decoding(
    model,
    input_ids: torch.LongTensor,
    drafter,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    streamer=None,
    stats: GenerationStats | None = None,
    feature_layers: tuple[int, ...] | None = None,
):
    """Prefill, then rounds of draft tree -> one target forward -> accept -> compact caches.

    `feature_layers`: the head's `target_feature_layers` (EAGLE-3), which `target_forward` concatenates
    for the drafter instead of the post-final-norm state; None for FSPAD heads and head-free drafting.

    `drafter`: any object with `observe(features)`, `draft(input_ids, max_depth) -> DraftTree` and
    `feedback(tree, accepted_path)`
    (`TreeDrafter`, `RetrievalDrafter`, a test oracle). A tree with no nodes is a plain step.
    """
    stats = stats if stats is not None else GenerationStats()
    cfg = text_config_of(model)
    do_sample = bool(generation_config.do_sample)
    want_scores = bool(generation_config.return_dict_in_generate and generation_config.output_scores)
    want_logits = bool(generation_config.return_dict_in_generate and generation_config.output_logits)
    all_scores, all_logits = [], []
    cache = DynamicCache()  # full layers everywhere: sliding windows are applied through the masks
    dtype = _model_dtype(model)

    t0 = time.perf_counter()
    features, logits = target_forward(model, input_ids, cache, last_row_only=True, feature_layers=feature_layers)  # logits [1, V]
    scores = logits_processor(input_ids, logits) if logits_processor else logits
    token = target_choices(scores, do_sample)
    stats.add_prefill(time.perf_counter() - t0)
    if want_scores:
        all_scores.append(scores)
    if want_logits:
        all_logits.append(logits)
    rule = vector_stop_rule(stopping_criteria, input_ids.device)  # None: criteria called token by token
    input_ids, _, done = _emit(token, input_ids, stopping_criteria, scores, rule)
    if streamer is not None:
        streamer.put(token.cpu())
    drafter.observe(features)

    max_length = generation_config.max_length
    while not done:
        context_len = input_ids.shape[1] - 1  # tokens in the target cache; the root is the last one
        t0 = time.perf_counter()
        remaining = max_length - input_ids.shape[1] if max_length is not None else None
        tree = drafter.draft(input_ids, max_depth=remaining)
        t1 = time.perf_counter()

        positions = context_len + torch.cat([tree.depth.new_zeros(1), tree.depth])  # [T + 1]
        tree_ids = torch.cat([input_ids[:, -1], tree.tokens])[None]  # [1, T + 1]
        mask = tree_mask(cfg, tree, context_len, positions, dtype)
        features, logits = target_forward(model, tree_ids, cache, mask, positions[None], feature_layers=feature_layers)
        scores = process_tree_scores(logits_processor, input_ids[0], tree, logits)
        choices = target_choices(scores, do_sample)
        acc = accept(tree, choices)
        compact_cache(cache, context_len, acc.path, acc.prefix)
        drafter.feedback(tree, acc.path)  # what the target accepted (the adaptive policy learns from it)
        t2 = time.perf_counter()

        new_tokens = torch.cat([tree.tokens[acc.path[1:] - 1], acc.bonus[None]])  # accepted nodes + bonus
        row_scores = scores[acc.path]  # scores that produced each new token
        input_ids, kept, done = _emit(new_tokens, input_ids, stopping_criteria, row_scores, rule)
        if streamer is not None:
            streamer.put(new_tokens[:kept].cpu())
        if want_scores:
            all_scores.extend(row_scores[:kept].split(1))
        if want_logits:
            all_logits.extend(logits[acc.path][:kept].split(1))
        stats.add_round(acc.num_accepted, kept, t1 - t0, t2 - t1, tree, acc.path)
        if not done:
            drafter.observe(features[:, acc.path])

    stats.finish()  # the per-round counters kept on the device: one host sync for the whole call
    if streamer is not None:
        streamer.end()
    if generation_config.return_dict_in_generate:
        return generate_output(
            sequences=input_ids,
            scores=tuple(all_scores) if want_scores else None,
            logits=tuple(all_logits) if want_logits else None,
            cache=cache if generation_config.use_cache else None,
        )
    return input_ids


def tree_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    draft_model: FSPADDraftModel | None = None,
    tree_total_tokens: int | None = None,
    tree_depth: int | None = None,
    tree_top_k: int | None = None,
    retrieval_branches: int | None = None,
    retrieval_length: int | None = None,
    tree_policy: str | None = None,
    cost_model=None,
    **model_kwargs,
):
    """Decoding method for `generate(custom_generate=tree_generate, draft_model=head, ...)`.

    Per-call tree settings: `tree_total_tokens`, `tree_depth`, `tree_top_k` (default: the head config).
    Retrieval drafts: `retrieval_branches` (continuations of the current suffix merged into the tree per
    round, 0 = off) and `retrieval_length` (tokens each); default: the head config. Without
    `draft_model`, `retrieval_branches >= 1` gives head-free (retrieval-only) drafting.
    `tree_policy`: "static" (the tree above) or "adaptive" (decoding/policy.py; priced by `cost_model`,
    default `CostModel.for_target`); default: the head config.
    The statistics of the call are stored in `tree_generate.last_generation_stats` and, with a head, in
    `draft_model.last_generation_stats`.
    Note: transformers does not forward `streamer` to a `custom_generate` callable; use the
    `assistant_model=head` route (after `import fspad_hf`) for streaming.
    """
    if draft_model is None and not retrieval_branches:
        raise ValueError(
            "tree_generate needs a drafter: `draft_model=<FSPADDraftModel>` in the generate() call, or "
            "`retrieval_branches=N` (N >= 1) for head-free drafting from the text so far."
        )
    if draft_model is not None and not isinstance(draft_model, FSPADDraftModel):
        raise TypeError(f"draft_model must be an FSPADDraftModel, got {type(draft_model).__name__}.")
    if synced_gpus:
        raise ValueError("FSPAD tree decoding does not support synced_gpus (multi-GPU ZeRO-3 generation).")
    validate_request(model, input_ids, generation_config, model_kwargs)
    settings = TreeSettings.resolve(
        draft_model.config if draft_model is not None else None, tree_total_tokens=tree_total_tokens,
        tree_depth=tree_depth, tree_top_k=tree_top_k, retrieval_branches=retrieval_branches,
        retrieval_length=retrieval_length, tree_policy=tree_policy, cost_model=cost_model,
    )
    stats = GenerationStats(prompt_length=input_ids.shape[1], settings=settings)
    tree_generate.last_generation_stats = stats
    if draft_model is None:
        drafter = RetrievalDrafter(settings.retrieval_branches, settings.retrieval_length)
        if settings.policy == "adaptive":
            drafter = settings.adaptive(drafter, model, stats)
        return run_tree_decoding(
            model, input_ids, drafter, logits_processor, stopping_criteria, generation_config, streamer, stats
        )
    draft_model.bind_target(model)  # cheap; re-checks the head against this target on every call
    device = next(model.parameters()).device
    if draft_model.device != device:
        logger.info("Moving the draft head to the target's device %s.", device)
        draft_model.to(device)
    draft_model.last_generation_stats = stats
    was_training = draft_model.training
    draft_model.eval()
    try:
        drafter = TreeDrafter(draft_model, settings)
        if settings.retrieval_branches:
            drafter = RetrievalDrafter(settings.retrieval_branches, settings.retrieval_length, drafter, settings.depth)
        if settings.policy == "adaptive":
            drafter = settings.adaptive(drafter, model, stats, draft_model)
        return run_tree_decoding(
            model, input_ids, drafter, logits_processor, stopping_criteria, generation_config, streamer, stats,
            feature_layers=draft_model.target_feature_layers,
        )
    finally:
        draft_model.train(was_training)


__all__ = ["tree_generate", "run_tree_decoding", "validate_request", "tree_mask", "target_forward"]
