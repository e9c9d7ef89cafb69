"""Input checks shared by the value-norm implementations (reference, blocked)."""

from __future__ import annotations

import torch

__all__ = ["check_value_norm_inputs"]


def check_value_norm_inputs(v: torch.Tensor, w_o: torch.Tensor) -> int:
    """Validate shapes; returns rep = H // Hkv.

    v: [Hkv, n, dh]; w_o: [H, dh, d_model] with H a multiple of Hkv.
    """
    if v.dim() != 3 or w_o.dim() != 3:
        raise ValueError("v must be [Hkv, n, dh] and w_o [H, dh, d_model]")
    n_kv, _, dh = v.shape
    n_heads = w_o.shape[0]
    if w_o.shape[1] != dh:
        raise ValueError(f"w_o head dim {w_o.shape[1]} != v head dim {dh}")
    if n_heads % n_kv != 0:
        raise ValueError(f"H={n_heads} is not a multiple of Hkv={n_kv}")
    return n_heads // n_kv
