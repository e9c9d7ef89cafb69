"""Checks and helpers shared by the flow-step implementations (reference, blocked)."""

from __future__ import annotations

import torch

from ..utils import check_positive

__all__ = ["active_rows", "allowed_mask", "check_inputs", "combine_heads", "gqa_rep"]


def allowed_mask(
    rows: torch.Tensor, cols: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Boolean [len(rows), len(cols)]: key ``i`` visible to query ``j``.

    Causal: ``i <= j``; with a sliding window additionally ``i > j - window``.
    """
    j = rows[:, None]
    i = cols[None, :]
    ok = i <= j
    if window is not None:
        ok = ok & (i > j - window)
    return ok


def gqa_rep(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query heads per kv head; query head h reads kv head h // rep."""
    n_heads, n_kv = q.shape[0], k.shape[0]
    if n_heads % n_kv != 0:
        raise ValueError(f"H={n_heads} is not a multiple of Hkv={n_kv}")
    return n_heads // n_kv


def check_inputs(q, k, lse, r, vn, window, softcap=None) -> None:
    """Shape (and window / softcap value) checks shared by every flow-step implementation."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError("q must be [H, n, dh] and k [Hkv, n, dh]")
    n_heads, n, dh = q.shape
    if k.shape[1:] != (n, dh):
        raise ValueError(f"k shape {tuple(k.shape)} does not match q {tuple(q.shape)}")
    gqa_rep(q, k)
    if lse.shape != (n_heads, n):
        raise ValueError(f"lse must be [H, n]={n_heads, n}, got {tuple(lse.shape)}")
    if vn.shape != (n_heads, n):
        raise ValueError(f"vn must be [H, n]={n_heads, n}, got {tuple(vn.shape)}")
    if r.dim() != 2 or r.shape[1] != n:
        raise ValueError(f"r must be [T, n] with n={n}, got {tuple(r.shape)}")
    if window is not None and window < 1:
        raise ValueError("window must be >= 1 or None")
    check_positive("softcap", softcap)


def active_rows(r: torch.Tensor) -> int:
    """Number of leading query rows that can contribute: 1 + last j with r[:, j] != 0.

    Rows past the last target position carry no rollout mass, so a causal flow step
    never needs them (nor keys beyond them).  Returns 0 if ``r`` is all zero.
    """
    nz = (r != 0).any(dim=0).nonzero()
    return 0 if nz.numel() == 0 else int(nz[-1, 0]) + 1


def combine_heads(
    phi: torch.Tensor, r: torch.Tensor, vn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head reduction shared by all implementations.

    Args:
        phi: [T, H, n] per-head flow ``Phi[t, h, i]`` (may be a transposed view).
        r:   [T, n] rollout rows of this layer.
        vn:  [H, n] value norms.

    Returns:
        flow [T, n] = sum_h phi * vn, and r_next [T, n] = (mean_h phi + r) / 2
        divided by its row sum (rows summing to zero are returned unnormalised).
    """
    dt = phi.dtype
    flow = torch.einsum("thn,hn->tn", phi, vn.to(dt))
    r_next = 0.5 * phi.mean(dim=1) + 0.5 * r.to(dt)
    # Mathematically the sum is already 1; renormalise only to stop drift across layers.
    total = r_next.sum(dim=-1, keepdim=True)
    r_next = r_next / torch.where(total == 0, torch.ones_like(total), total)
    return flow, r_next
