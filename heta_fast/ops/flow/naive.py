"""Eager flow step: materialises the attention probabilities A [H, n, n]; the test oracle."""

from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from ..utils import check_positive, tanh_softcap
from .common import allowed_mask, check_inputs, combine_heads, gqa_rep

__all__ = ["attention_probs_reference", "flow_step_reference", "lse_reference"]


def _masked_scores(q, k, scale, window, dt, softcap=None) -> torch.Tensor:
    """[H, n, n] scores in dtype ``dt`` with disallowed entries set to -inf.

    The score is ``scale * q k^T``, soft-capped to ``c * tanh(scale * q k^T / c)`` when
    ``softcap`` = c is given, then masked.
    """
    rep = gqa_rep(q, k)
    kk = k.to(dt).repeat_interleave(rep, dim=0)  # plain GQA expansion; oracle only
    scores = scale * torch.matmul(q.to(dt), kk.transpose(-1, -2))
    scores = tanh_softcap(scores, softcap)
    n = q.shape[1]
    idx = torch.arange(n, device=q.device)
    return scores.masked_fill(~allowed_mask(idx, idx, window), float("-inf"))


def attention_probs_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal (optionally windowed, optionally soft-capped) softmax attention probabilities.

    Args: q [H, n, dh], k [Hkv, n, dh]; softcap c > 0 or None (scores c * tanh(s / c)).
    Returns A [H, n, n] (rows sum to 1), computed in float64 if the inputs are float64, else
    float32.
    """
    check_positive("softcap", softcap)
    dt = accumulation_dtype(q, k)
    return torch.softmax(_masked_scores(q, k, scale, window, dt, softcap), dim=-1)


def lse_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Natural-log softmax denominator per query row: [H, n] (float64 if inputs are).

    With ``softcap`` = c it is taken over the capped scores c * tanh(scale * q . k / c), as a
    model with attention logit soft-capping records it.
    """
    check_positive("softcap", softcap)
    dt = accumulation_dtype(q, k)
    return torch.logsumexp(_masked_scores(q, k, scale, window, dt, softcap), dim=-1)


def flow_step_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    r: torch.Tensor,
    vn: torch.Tensor,
    window: int | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle flow step: materialises A [H, n, n] from q, k and the given lse.

    Args:
        q [H, n, dh], k [Hkv, n, dh], lse [H, n], r [T, n], vn [H, n].
        softcap: c > 0 or None; A[h, j, i] = exp(c * tanh(scale * q_j . k_i / c) - lse[h, j]).
    Returns:
        flow [T, n], r_next [T, n] (float64 if any input is float64, else float32).
    """
    check_inputs(q, k, lse, r, vn, window, softcap)
    dt = accumulation_dtype(q, k, lse, r, vn)
    scores = _masked_scores(q, k, scale, window, dt, softcap)
    probs = torch.exp(scores - lse.to(dt)[:, :, None])  # exp(-inf) = 0 where masked
    phi = torch.einsum("tj,hji->thi", r.to(dt), probs)
    return combine_heads(phi, r, vn)
