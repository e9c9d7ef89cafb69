"""The flow gate's value norms, reduced during the capture pass: vn[h, i] = ‖v_i W_O^h‖₁."""
from __future__ import annotations

import torch

from ...ops.value_norm import value_norm


def value_norm_reducer(model):
    """A capture-time reduction (layer, values [Hkv, n, dh]) -> vn [H, n] for ``model``.

    The per-head output projections are read once, when the reducer is made.
    """
    out_proj = [model.out_proj(i) for i in range(len(model.layers))]

    def reduce(layer: int, values: torch.Tensor) -> torch.Tensor:
        return value_norm(values, out_proj[layer])

    return reduce
