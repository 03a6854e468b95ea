"""Configuration of an FSPAD / EAGLE-2 / PosS draft head, and of the EAGLE-3 head kind."""

from __future__ import annotations

import copy
from typing import Any

from dataclasses import dataclass

from transformers import AutoConfig, PretrainedConfig


@dataclass(frozen=True)
class Method:
    """One head method: its CLI key, display name, FS / PAD switches and a one-line description."""

    key: str
    name: str
    feature_sampling: bool
    partial_alignment: bool
    description: str


# The one method table (CLI `--method`, `FSPADConfig.method_name`, model cards).
METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("eagle2", "EAGLE-2", False, False, "baseline feature-level head: `fc([embedding; feature])` -> one decoder layer"),
        Method("fs", "FS", True, False, "EAGLE-2 head + feature sampling (embedding-gated residual MLP)"),
        Method("pad", "PAD", False, True, "EAGLE-2 head + partial alignment distillation (predict / regress halves)"),
        Method("fspad", "FSPAD", True, True, "feature sampling + partial alignment distillation"),
    )
}


@dataclass(frozen=True)
class HeadKind:
    """One head kind (`FSPADConfig.head_kind`): how its layers are built and which method it is.

    `method` is None for the FSPAD family, whose FS / PAD switches pick the entry of `METHODS`; a kind
    with a fixed method names it here. The modeling class of each kind is registered in
    `head/loading.py` (`HEAD_CLASSES`), so loading a folder builds the right class.
    """

    key: str
    method: Method | None
    description: str


# The one head-kind table. METHODS stays the training table (`fspad-hf train --method`): EAGLE-3 heads
# are imported (fspad_hf.interop.load_eagle3) or built with Eagle3DraftModel.from_target, not trained here.
HEAD_KINDS: dict[str, HeadKind] = {
    k.key: k
    for k in (
        HeadKind("fspad", None, "FSPAD / EAGLE-2 / PosS: `fc([embedding; feature])`, the target's own layer class"),
        HeadKind("eagle3", Method("eagle3", "EAGLE-3", False, False,
                                  "three target layers fused by `fc` (3H -> H), a Llama layer over [norm(e); norm(h)], "
                                  "own norm and LM head over a reduced vocabulary"),
                 "EAGLE-3 (SafeAILab/EAGLE cnets.py, SpecForge, speculators): see fspad_hf.head.eagle3"),
    )
}


def method_by_key(key: str) -> Method:
    if key not in METHODS:
        raise ValueError(f"unknown method {key!r}; choose one of {sorted(METHODS)}.")
    return METHODS[key]


class FSPADConfig(PretrainedConfig):
    r"""Configuration of a feature-level draft head (FSPAD, its EAGLE-2 baseline, and PosS).

    The head is built from the *target* model's own decoder-layer class; its architecture is fully
    described by `target_config` (a copy of the target's text config) plus the switches below. The
    frozen target embedding and LM head are not part of the head: they are bound from the target at
    use time, and the head is checked against that target (`hidden_size`, `vocab_size`, model type).

    Args:
        target_config (`dict`):
            The target's text config (`target.config.get_text_config().to_dict()`). Used to build the
            draft decoder layer(s) with the target's own classes and to check compatibility on use.
        target_name_or_path (`str`, *optional*):
            Name or path of the target the head was built/trained for (informational; a mismatch with
            the target it is used with gives a warning, see `check_target`).
        target_architecture (`str`, *optional*):
            The target's architecture class name, e.g. `"LlamaForCausalLM"`.
        target_tokenizer_fingerprint (`str`, *optional*):
            A short hash of the target tokenizer's vocabulary, when known (checked on use if given).
        feature_sampling (`bool`, defaults to `True`):
            FS: add the embedding-gated residual MLP after the `fc` fusion (METHOD.md section 2).
        partial_alignment (`bool`, defaults to `True`):
            PAD: the draft layer's MLP outputs `2 * hidden_size`; the first half (predict half) feeds
            the LM head, the second half (regress half) is aligned to the next target feature and fed
            back during drafting. `feature_sampling=False, partial_alignment=False` is the EAGLE-2 head.
        num_draft_layers (`int`, defaults to 1):
            Number of decoder layers in the head. With 1 layer the head is a plain single-layer head;
            with more, layer `i` is the PosS "position specialist" of draft positions
            `i*N+1 .. (i+1)*N` (N = `positions_per_layer`); the last layer serves all later positions.
        positions_per_layer (`int`, defaults to 1):
            PosS-N: how many consecutive draft positions each specialist serves.
        tree_total_tokens (`int`, defaults to 24):
            Draft nodes kept in the verification tree (the root is added on top). Each target forward
            then processes `tree_total_tokens + 1` tokens; 16-32 suits a CPU, 60 a GPU.
        tree_depth (`int`, defaults to 5):
            Maximum depth of the draft tree (= maximum number of drafted tokens on one path).
        tree_top_k (`int`, defaults to 8):
            Children expanded per frontier node and size of the frontier at each level.
        retrieval_branches (`int`, defaults to 4):
            Retrieval drafts (decoding/retrieval.py): up to this many distinct continuations of the
            current suffix, found in the text so far (prompt + generated) by n-gram matching, are merged
            into the head's tree each round (shared prefixes merged) and verified by the same target
            forward. 0 turns retrieval off. With the adaptive policy a retrieved node is verified only
            when its measured acceptance rate pays for its cost, so the default 4 is safe on any machine.
        retrieval_length (`int`, defaults to 8):
            Maximum tokens per retrieved continuation (also cut to the tokens left to generate).
        tree_policy (`str`, defaults to `"adaptive"`):
            `"static"`: verify the fixed tree above every round. `"adaptive"` (decoding/policy.py): each
            round, verify the number of candidate nodes (at most `tree_depth` levels, top-k
            `tree_top_k`, plus retrieval nodes) that maximises the expected new tokens per ms under
            the machine's cost model, drafting fewer levels or none (plain steps) when they do not pay.
            The cost model is measured once per machine, dtype and thread count (about 40 s at the first
            call; `fspad-hf calibrate` does it ahead) and cached. Per call, `tree_policy="static"` and
            `retrieval_branches=0` give the fixed head-only tree.
        draft_vocab_size (`int`, *optional*):
            If set, the head predicts over a reduced vocabulary of this many target token ids (the
            `d2t` buffer maps draft ids to target ids). Verification always uses the full vocabulary.
        hidden_size (`int`): the target's hidden size (copied from `target_config`).
        intermediate_size (`int`): the draft layer's MLP width (the target's).
        vocab_size (`int`): the target's vocabulary size (copied from `target_config`).
        feature_noise (`float`, defaults to 0.2):
            Amplitude of the uniform noise added to input features during training:
            `f + (U(0,1) - 0.5) * feature_noise * 512 / seq_len` (METHOD.md section 1).
        head_kind (`str`, defaults to `"fspad"`):
            The head kind (`HEAD_KINDS`): `"fspad"` (FSPAD / EAGLE-2 / PosS, built from the target's layer
            class) or `"eagle3"` (EAGLE-3, `fspad_hf.head.eagle3.Eagle3DraftModel`).
        target_feature_layers (`list[int]`, *optional*):
            EAGLE-3 only: the 0-based indices of the target decoder layers whose *outputs* (pre-final-norm
            residual stream) are concatenated, low to high, and fused by `fc`. The EAGLE-3 default for an
            L-layer target is `[1, L // 2 - 1, L - 4]` (SpecForge's ids; the EAGLE code and vLLM capture the
            same tensors as the inputs of layers 2, L // 2, L - 3). Checked against the target on use.
        draft_layer_config (`dict`, *optional*):
            EAGLE-3 only: the config of the head's own decoder layer (a Llama text config: hidden size, heads,
            MLP width, RoPE, norm epsilon, the target's vocabulary size). EAGLE-3 layers are Llama layers
            whatever the target's architecture, so this is not the target's config.
    """

    model_type = "fspad"

    def __init__(
        self,
        target_config: dict[str, Any] | None = None,
        target_name_or_path: str | None = None,
        target_architecture: str | None = None,
        target_tokenizer_fingerprint: str | None = None,
        feature_sampling: bool = True,
        partial_alignment: bool = True,
        num_draft_layers: int = 1,
        positions_per_layer: int = 1,
        tree_total_tokens: int = 24,
        tree_depth: int = 5,
        tree_top_k: int = 8,
        retrieval_branches: int = 4,
        retrieval_length: int = 8,
        tree_policy: str = "adaptive",
        draft_vocab_size: int | None = None,
        feature_noise: float = 0.2,
        head_kind: str = "fspad",
        target_feature_layers: list[int] | None = None,
        draft_layer_config: dict[str, Any] | None = None,
        **kwargs,
    ):
        self.target_config = copy.deepcopy(target_config) if target_config is not None else None
        self.target_name_or_path = target_name_or_path
        self.target_architecture = target_architecture
        self.target_tokenizer_fingerprint = target_tokenizer_fingerprint
        self.feature_sampling = bool(feature_sampling)
        self.partial_alignment = bool(partial_alignment)
        self.num_draft_layers = int(num_draft_layers)
        self.positions_per_layer = int(positions_per_layer)
        self.tree_total_tokens = int(tree_total_tokens)
        self.tree_depth = int(tree_depth)
        self.tree_top_k = int(tree_top_k)
        self.retrieval_branches = int(retrieval_branches)
        self.retrieval_length = int(retrieval_length)
        self.tree_policy = str(tree_policy)
        self.draft_vocab_size = draft_vocab_size
        self.feature_noise = float(feature_noise)
        self.head_kind = str(head_kind)
        self.target_feature_layers = None if target_feature_layers is None else [int(i) for i in target_feature_layers]
        self.draft_layer_config = copy.deepcopy(draft_layer_config) if draft_layer_config is not None else None
        tc = self.draft_layer_config or self.target_config or {}  # EAGLE-3: the draft layer's own sizes
        kwargs.setdefault("hidden_size", tc.get("hidden_size"))
        kwargs.setdefault("intermediate_size", tc.get("intermediate_size"))
        kwargs.setdefault("vocab_size", tc.get("vocab_size"))
        for key in ("hidden_size", "intermediate_size", "vocab_size"):
            setattr(self, key, kwargs.pop(key))
        super().__init__(**kwargs)
        self.validate_fields()

    def validate_fields(self) -> None:
        """Raise a ValueError naming the bad field and the fix."""
        positive = ("num_draft_layers", "positions_per_layer", "tree_total_tokens", "tree_depth", "tree_top_k")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"FSPADConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.retrieval_branches < 0:
            raise ValueError(f"FSPADConfig.retrieval_branches must be >= 0 (0 = off), got {self.retrieval_branches}.")
        if self.retrieval_length < 1:
            raise ValueError(f"FSPADConfig.retrieval_length must be >= 1, got {self.retrieval_length}.")
        if self.tree_policy not in ("static", "adaptive"):
            raise ValueError(f"FSPADConfig.tree_policy must be 'static' or 'adaptive', got {self.tree_policy!r}.")
        if self.tree_total_tokens < self.tree_depth:
            raise ValueError(
                f"FSPADConfig.tree_total_tokens ({self.tree_total_tokens}) must be >= tree_depth "
                f"({self.tree_depth}): a tree cannot be deeper than it has nodes."
            )
        if self.target_config is not None:
            for key in ("model_type", "hidden_size", "vocab_size"):
                if key not in self.target_config:
                    raise ValueError(
                        f"FSPADConfig.target_config lacks '{key}'; rebuild the head with "
                        "FSPADDraftModel.from_target(target) or pass target.config.get_text_config().to_dict()."
                    )
        if self.draft_vocab_size is not None and self.vocab_size is not None:
            if not 0 < self.draft_vocab_size <= self.vocab_size:
                raise ValueError(
                    f"FSPADConfig.draft_vocab_size ({self.draft_vocab_size}) must be in (0, vocab_size={self.vocab_size}]."
                )

    # standalone: omit (method names: CLI, training logs, model cards)
    @property
    def method(self) -> Method:
        """The `METHODS` entry the FS / PAD switches describe."""
        fixed = HEAD_KINDS[self.head_kind].method
        if fixed is not None:
            return fixed
        switches = (self.feature_sampling, self.partial_alignment)
        return next(m for m in METHODS.values() if (m.feature_sampling, m.partial_alignment) == switches)

    # standalone: omit (method names: CLI, training logs, model cards)
    @property
    def method_name(self) -> str:
        """Human name of the method the switches describe: EAGLE-2, FS, PAD, FSPAD (+ PosS-N)."""
        base = self.method.name
        return f"{base}+PosS-{self.positions_per_layer}" if self.num_draft_layers > 1 else base

    def specialist_for_position(self, position: int) -> int:
        """Index of the draft layer that serves draft position `position` (1-based; PosS rule)."""
        if position < 1:
            raise ValueError(f"draft positions are 1-based, got {position}")
        return min((position - 1) // self.positions_per_layer, self.num_draft_layers - 1)

    def build_target_text_config(self) -> PretrainedConfig:
        """The draft layers' config: the target's text config with `num_draft_layers` full-attention layers."""
        if self.head_kind != "fspad":  # e.g. EAGLE-3: built by fspad_hf.head.eagle3 (not in the standalone file)
            raise ValueError(f"A '{self.head_kind}' head needs the fspad-hf package (FSPAD / EAGLE-2 / PosS heads only here).")
        if self.target_config is None:
            raise ValueError("FSPADConfig.target_config is empty: build the head with FSPADDraftModel.from_target(target).")
        tc = copy.deepcopy(self.target_config)
        model_type = tc.pop("model_type")
        for key in ("architectures", "auto_map", "quantization_config", "transformers_version"):
            tc.pop(key, None)
        cfg = AutoConfig.for_model(model_type, **tc)
        cfg.num_hidden_layers = self.num_draft_layers
        if getattr(cfg, "layer_types", None) is not None:
            # The draft context can be long: every draft layer attends to all of it.
            cfg.layer_types = ["full_attention"] * self.num_draft_layers
        if hasattr(cfg, "sliding_window"):
            cfg.sliding_window = None
        if hasattr(cfg, "use_sliding_window"):
            cfg.use_sliding_window = False
        cfg._attn_implementation = self._attn_implementation or "sdpa"
        return cfg


__all__ = ["FSPADConfig", "METHODS", "Method", "method_by_key", "HEAD_KINDS", "HeadKind"]
