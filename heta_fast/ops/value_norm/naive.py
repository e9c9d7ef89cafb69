"""Eager value norms: expands kv heads and materialises [H, n, d_model]; the test oracle."""

from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from .common import check_value_norm_inputs

__all__ = ["value_norm_reference"]


def value_norm_reference(v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Oracle: expands kv heads and materialises every head output.

    Args: v [Hkv, n, dh], w_o [H, dh, d_model]. Returns vn [H, n] (float64 if an input
    is float64, else float32).
    """
    rep = check_value_norm_inputs(v, w_o)
    dt = accumulation_dtype(v, w_o)
    v_h = v.to(dt).repeat_interleave(rep, dim=0)  # [H, n, dh]
    return torch.matmul(v_h, w_o.to(dt)).abs().sum(dim=-1)
