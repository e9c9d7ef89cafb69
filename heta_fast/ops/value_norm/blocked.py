"""Value norms tiled over positions (the CPU path): at most one [H, block, d_model] tile."""

from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from .common import check_value_norm_inputs

__all__ = ["DEFAULT_BLOCK", "value_norm_blocked"]

# Rows per tile; the [H, block, d_model] tile (9 x 128 x 576 fp32 = 2.6 MB for the
# default model) stays cache-friendly.
DEFAULT_BLOCK = 128


def value_norm_blocked(
    v: torch.Tensor, w_o: torch.Tensor, block: int = DEFAULT_BLOCK
) -> torch.Tensor:
    """Value norms tiled over positions; memory one [H, block, d_model] tile.

    Args: v [Hkv, n, dh], w_o [H, dh, d_model], block rows per tile.
    Returns: vn [H, n] in float32 (float64 if an input is float64).
    """
    rep = check_value_norm_inputs(v, w_o)
    dt = accumulation_dtype(v, w_o)
    n_kv, n, dh = v.shape
    n_heads, _, d_model = w_o.shape
    # Group heads by kv head: [Hkv, rep, dh, D] @ [Hkv, 1, B, dh] broadcasts each value
    # tile over its query group without copying v.
    w4 = w_o.to(dt).reshape(n_kv, rep, dh, d_model)
    v_c = v.to(dt)
    out = torch.empty(n_heads, n, dtype=dt, device=v.device)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        tile = torch.matmul(v_c[:, None, i0:i1], w4)  # [Hkv, rep, B, D]
        out[:, i0:i1] = tile.abs_().sum(dim=-1).reshape(n_heads, i1 - i0)
    return out
