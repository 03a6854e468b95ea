"""Building blocks of the draft head: the FS fusion and the draft-layer recipes (with PAD).

The draft decoder layer is an instance of the *target's own* decoder-layer class; this module only
composes its sub-modules (attention, norms, MLP) the way METHOD.md asks: no input norm, and with
partial alignment (PAD) an MLP whose down-projection is `I -> 2H` and a duplicated residual stream.
"""

from __future__ import annotations

from collections.abc import Callable
import torch
from torch import nn

from .interface import DraftStep


class FeatureFusion(nn.Module):
    """`z = W_fc [e ; f] + b`, and with Feature Sampling `z' = z + W_d(SiLU(W_g e) * W_u RMSNorm(z))`."""

    def __init__(self, hidden_size: int, intermediate_size: int, feature_sampling: bool, norm_factory: Callable):
        super().__init__()
        self.fc = nn.Linear(2 * hidden_size, hidden_size, bias=True)
        self.feature_sampling = feature_sampling
        if feature_sampling:
            self.fs_norm = norm_factory()
            self.fs_gate = nn.Linear(hidden_size, intermediate_size, bias=False)  # W_g: I x H
            self.fs_up = nn.Linear(hidden_size, intermediate_size, bias=False)  # W_u: I x H
            self.fs_down = nn.Linear(intermediate_size, hidden_size, bias=False)  # W_d: H x I

    def forward(self, embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        # embeds, features: [B, T, H]; embedding first, then feature (METHOD.md section 1)
        z = self.fc(torch.cat([embeds, features], dim=-1))  # [B, T, H]
        if not self.feature_sampling:
            return z
        gate = nn.functional.silu(self.fs_gate(embeds))  # [B, T, I]: the chosen token selects channels
        return z + self.fs_down(gate * self.fs_up(self.fs_norm(z)))


def _split_mlp_output(y: torch.Tensor, hidden_size: int, partial_alignment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not partial_alignment:
        return y, y
    return y[..., :hidden_size], y[..., hidden_size:]  # [B, T, 2H] -> predict half, regress half


def pre_norm_recipe(layer: nn.Module, z: torch.Tensor, attn_kwargs: dict, pad: bool) -> DraftStep:
    """Llama / Qwen2 / Mistral style: `h = z + attn(z)`; `o = [h; h] + mlp(post_attention_norm(h))`."""
    attn_out, _ = layer.self_attn(hidden_states=z, **attn_kwargs)
    h = z + attn_out  # input norm skipped on purpose (METHOD.md section 1)
    y_p, y_r = _split_mlp_output(layer.mlp(layer.post_attention_layernorm(h)), h.shape[-1], pad)
    return DraftStep(predict=h + y_p, feedback=h + y_r)


def sandwich_norm_recipe(layer: nn.Module, z: torch.Tensor, attn_kwargs: dict, pad: bool) -> DraftStep:
    """Gemma-2/3 style (norms before and after each block). With PAD the post-feed-forward norm
    (a per-vector RMSNorm of width H) is applied to each half separately: it is the natural extension
    of a layer whose MLP output is normalised before the residual add."""
    attn_out, _ = layer.self_attn(hidden_states=z, **attn_kwargs)
    h = z + layer.post_attention_layernorm(attn_out)
    y = layer.mlp(layer.pre_feedforward_layernorm(h))
    y_p, y_r = _split_mlp_output(y, h.shape[-1], pad)
    post = layer.post_feedforward_layernorm
    if not pad:
        y_p = y_r = post(y_p)
    else:
        y_p, y_r = post(y_p), post(y_r)
    return DraftStep(predict=h + y_p, feedback=h + y_r)


# Registry: first predicate that matches a layer instance picks its recipe.
LAYER_RECIPES: list[tuple[Callable[[nn.Module], bool], Callable]] = [
    (lambda layer: hasattr(layer, "pre_feedforward_layernorm") and hasattr(layer, "post_feedforward_layernorm"),
     sandwich_norm_recipe),
    (lambda layer: hasattr(layer, "post_attention_layernorm") and hasattr(layer, "mlp"), pre_norm_recipe),
]


def recipe_for(layer: nn.Module) -> Callable:
    for predicate, recipe in LAYER_RECIPES:
        if predicate(layer):
            return recipe
    raise NotImplementedError(
        f"fspad_hf does not know how to run a draft layer of class {type(layer).__name__}: it needs "
        "`self_attn`, `mlp` and `post_attention_layernorm` sub-modules. Register a recipe in "
        "fspad_hf.head.layers.LAYER_RECIPES for this architecture."
    )


def adapt_layer(layer: nn.Module, hidden_size: int, partial_alignment: bool) -> nn.Module:
    """Drop the input norm (never used) and, with PAD, widen the MLP down-projection to `I -> 2H`."""
    if hasattr(layer, "input_layernorm"):
        del layer.input_layernorm
    if partial_alignment:
        down = getattr(layer.mlp, "down_proj", None)
        if not isinstance(down, nn.Linear):
            raise NotImplementedError(
                f"partial_alignment needs an MLP with a `down_proj` nn.Linear; {type(layer.mlp).__name__} has none."
            )
        layer.mlp.down_proj = nn.Linear(down.in_features, 2 * hidden_size, bias=down.bias is not None)
    return layer


__all__ = ["FeatureFusion", "LAYER_RECIPES", "recipe_for", "adapt_layer"]
