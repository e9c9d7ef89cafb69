"""Flow step tiled over query rows (the CPU path): O(H * block * n) memory, never [H, n, n]."""

from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from ..utils import tanh_softcap
from .common import active_rows, allowed_mask, check_inputs, combine_heads

__all__ = ["DEFAULT_BLOCK", "flow_step_blocked"]

# 64 query rows per tile measured fastest on CPU (tile stays in cache; QK^T is the
# dominant, compute-bound cost either way).
DEFAULT_BLOCK = 64


def _partial_mask_ranges(j0: int, j1: int, lo: int, window: int | None):
    """Key column ranges [c0, c1) of a query tile [j0, j1) that need masking.

    Keys in [lo, j0) are fully visible causally; only the diagonal block [j0, j1) and,
    with a window, the oldest keys [lo, j1 - window) are partially hidden.  Masking just
    these slices avoids a full [H, block, n] masked_fill per tile.
    """
    ranges = [(max(j0, lo), j1)]
    if window is not None and j1 - window > lo:
        ranges.append((lo, min(j1 - window, j1)))
    return ranges


def _tile_probs(q4, k_t, neg_lse4, scale, j0, j1, lo, window, softcap=None) -> torch.Tensor:
    """Probabilities for query rows [j0, j1) against keys [lo, j1).

    Scores are ``scale * q . k``, soft-capped to ``c * tanh(scale * q . k / c)`` when
    ``softcap`` = c is given.

    Args:
        q4: [Hkv, rep, n, dh] queries (compute dtype), grouped by kv head.
        k_t: [Hkv, dh, n] keys transposed (compute dtype).
        neg_lse4: [Hkv, rep, n] negated lse.
    Returns:
        P [H, B, m] with B = j1 - j0, m = j1 - lo (masked entries exactly 0).
    """
    n_kv, rep, _, dh = q4.shape
    b, m = j1 - j0, j1 - lo
    # Viewing q as [Hkv, rep*B, dh] shares each kv head across its query group without
    # repeating k (one bmm per kv head instead of per query head).
    q_tile = q4[:, :, j0:j1].reshape(n_kv, rep * b, dh)
    bias = neg_lse4[:, :, j0:j1].reshape(n_kv, rep * b, 1)
    if softcap is None:
        scores = torch.baddbmm(bias, q_tile, k_t[:, :, lo:j1], alpha=scale)
    else:
        # The cap applies to the scaled score before lse is subtracted, so -lse cannot be
        # folded into the matmul; same order of operations as the model (scale, /c, tanh, *c).
        scores = torch.bmm(q_tile, k_t[:, :, lo:j1]).mul_(scale)
        tanh_softcap(scores, softcap, inplace=True).add_(bias)
    scores = scores.view(n_kv * rep, b, m)
    rows = torch.arange(j0, j1, device=q4.device)
    for c0, c1 in _partial_mask_ranges(j0, j1, lo, window):
        cols = torch.arange(c0, c1, device=q4.device)
        hidden = ~allowed_mask(rows, cols, window)
        scores[:, :, c0 - lo : c1 - lo].masked_fill_(hidden, float("-inf"))
    return scores.exp_()


def flow_step_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    r: torch.Tensor,
    vn: torch.Tensor,
    window: int | None = None,
    block: int = DEFAULT_BLOCK,
    *,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow step tiled over query rows; never materialises [H, n, n].

    Working memory is one probability tile [H, block, n] plus the per-head flow
    accumulator [H, T, n].  Query rows after the last target position and tiles whose
    r columns are all zero are skipped.

    Args:
        q [H, n, dh], k [Hkv, n, dh], lse [H, n], r [T, n], vn [H, n]; any float dtype.
        window: sliding window length or None for plain causal attention.
        block: query rows per tile.
        softcap: attention logit soft-capping c > 0 (Gemma-2), or None (off): the score of
            (query j, key i) is c * tanh(scale * q_j . k_i / c) before masking, and
            A[h, j, i] = exp(score - lse[h, j]) with ``lse`` taken over the capped scores.
    Returns:
        flow [T, n], r_next [T, n] in float32 (float64 if any input is float64).
    """
    check_inputs(q, k, lse, r, vn, window, softcap)
    dt = accumulation_dtype(q, k, lse, r, vn)
    n_heads, n, dh = q.shape
    n_kv = k.shape[0]
    rep = n_heads // n_kv
    r_c = r.to(dt)
    phi = torch.zeros(n_heads, r.shape[0], n, dtype=dt, device=q.device)  # [H, T, n]

    n_rows = active_rows(r_c)
    if n_rows > 0:
        q4 = q[:, :n_rows].to(dt).reshape(n_kv, rep, n_rows, dh)
        k_t = k[:, :n_rows].to(dt).transpose(1, 2)  # [Hkv, dh, n_rows]; keys i <= j
        neg_lse4 = (-lse[:, :n_rows].to(dt)).reshape(n_kv, rep, n_rows)
        row_live = (r_c[:, :n_rows] != 0).any(dim=0)
        for j0 in range(0, n_rows, block):
            j1 = min(j0 + block, n_rows)
            if not bool(row_live[j0:j1].any()):
                continue  # no rollout mass enters through these queries
            lo = 0 if window is None else max(0, j0 - window + 1)
            probs = _tile_probs(q4, k_t, neg_lse4, scale, j0, j1, lo, window, softcap)
            # [T, B] @ [H, B, m] -> [H, T, m]: every target in one batched matmul.
            phi[:, :, lo:j1] += torch.matmul(r_c[:, j0:j1], probs)
    return combine_heads(phi.transpose(0, 1), r_c, vn)
