"""Initialising a draft head's layers from the target (issue 13: "copy of the target's last layer").

The draft layer is an instance of the target's own decoder-layer class (see `layers.adapt_layer`), so
its attention, MLP and norms have the target's shapes, except:

- the input norm, which the draft layer drops (it is not copied);
- with partial alignment (PAD), the MLP's `down_proj` maps I -> 2H: the target's `I -> H` weight (and
  bias) is copied into both halves, so the predict and regress halves start as the same output.

Every PosS specialist gets the same copy. The fusion (`fc`, FS MLP) keeps its random initialisation:
the target has no counterpart for it.
"""

from __future__ import annotations

import torch
from torch import nn

from .target_parts import decoder_of

SKIPPED = ("input_layernorm.",)  # dropped by adapt_layer: the fused vector goes straight into attention


def _copy_parameter(name: str, dst: torch.Tensor, src: torch.Tensor) -> None:
    src = src.detach().to(device=dst.device, dtype=dst.dtype)
    if dst.shape == src.shape:
        dst.copy_(src)
    elif dst.shape[0] == 2 * src.shape[0] and dst.shape[1:] == src.shape[1:]:  # PAD's widened down_proj
        half = src.shape[0]
        dst[:half].copy_(src)
        dst[half:].copy_(src)
    else:
        raise ValueError(f"cannot copy target parameter {name} of shape {tuple(src.shape)} into the draft layer's "
                         f"{tuple(dst.shape)}")


@torch.no_grad()
def init_layers_from_target(head: nn.Module, target: nn.Module, layer_index: int = -1) -> list[str]:
    """Copy the target's decoder layer `layer_index` (default: the last) into every draft layer of `head`.

    Returns the names (relative to a layer) of the copied parameters. Raises if a draft-layer parameter
    has no counterpart in the target layer (the head would otherwise be half random, half copied).
    """
    source = decoder_of(target).layers[layer_index]
    src = {n: p for n, p in source.named_parameters() if not n.startswith(SKIPPED)}
    copied = []
    for layer in head.layers:
        dst = dict(layer.named_parameters())
        missing = sorted(set(dst) - set(src))
        if missing:
            raise ValueError(f"the target's layer has no parameters for draft-layer {missing[:4]}: cannot initialise "
                             "the draft layers from the target")
        for name, param in dst.items():
            _copy_parameter(name, param, src[name])
        copied = sorted(dst)
    return copied


__all__ = ["init_layers_from_target"]
