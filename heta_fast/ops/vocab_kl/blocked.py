"""Vocabulary KL over vocabulary chunks with an online logsumexp (the CPU path): O(B * chunk) memory."""

from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from .common import transform_logits, validate_vocab_kl_inputs

__all__ = ["vocab_kl_blocked"]


def _chunk_logits(
    hidden: torch.Tensor, weight_chunk: torch.Tensor, bias_chunk: torch.Tensor | None
) -> torch.Tensor:
    """[B, d] x [C, d] (+ [C]) -> [B, C] logits in ``hidden``'s dtype."""
    weight_chunk = weight_chunk.to(hidden.dtype)
    if bias_chunk is None:
        return hidden @ weight_chunk.T
    return torch.addmm(bias_chunk.to(hidden.dtype), hidden, weight_chunk.T)


def vocab_kl_blocked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = 8192,
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Chunked-vocabulary KL with an online logsumexp; never builds [B, V].

    Per vocab chunk ``[v0, v1)`` we compute the ``[B, C]`` logits (transformed by
    ``logit_scale`` and ``softcap`` as in :func:`~.common.transform_logits`) and update
    four running row statistics (all ``[B]``):

    * ``m``     running max of the logits,
    * ``s``     sum of ``exp(z - m)``, rescaled by ``exp(m_old - m_new)`` when the
      max grows (so no exp ever overflows),
    * ``cross`` sum of ``p (log p - z)`` (entries with p = 0 contribute 0),
    * ``psum``  sum of ``p``.

    and finish with ``KL = cross + (m + log s) * psum``.

    Args:
        hidden:       [B, d]
        weight:       [V, d]
        ref_logp:     [T, V]
        target_index: [B]
        bias:         optional [V]
        chunk_size:   vocabulary columns per chunk (C); memory is O(B * C).
        logit_scale:  z <- z * logit_scale after the bias (skipped at 1.0).
        softcap:      z <- c * tanh(z / c) after the scale when given (c > 0).

    Returns:
        [B] float32 (float64 if any input is float64).
    """
    batch, vocab, _, _ = validate_vocab_kl_inputs(
        hidden, weight, ref_logp, target_index, bias, logit_scale=logit_scale, softcap=softcap
    )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = accumulation_dtype(hidden, weight, ref_logp, bias)
    device = hidden.device
    h = hidden.to(dtype)  # [B, d], small: cast once
    rows = target_index.long()

    m = torch.full((batch,), float("-inf"), dtype=dtype, device=device)
    s = torch.zeros(batch, dtype=dtype, device=device)
    cross = torch.zeros(batch, dtype=dtype, device=device)
    psum = torch.zeros(batch, dtype=dtype, device=device)

    for v0 in range(0, vocab, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        z = _chunk_logits(h, weight[v0:v1], None if bias is None else bias[v0:v1])  # [B, C]
        z = transform_logits(z, logit_scale, softcap, inplace=True)  # defaults: z itself

        # Gather only this chunk of the reference rows: [B, C], not [B, V].
        log_p = ref_logp[:, v0:v1].index_select(0, rows).to(dtype)
        p = log_p.exp()
        # Where p = 0 (log p = -inf) use log p := 0 so that p * (log p - z) is an
        # exact 0 instead of 0 * -inf = NaN.
        log_p = log_p.masked_fill(p == 0, 0.0)
        cross += (p * (log_p - z)).sum(dim=1)
        psum += p.sum(dim=1)

        # Online logsumexp.  On the first chunk m = -inf, exp(-inf) = 0 and s = 0,
        # so the rescale term vanishes cleanly (z itself is always finite).
        # z is not needed after this, so exp(z - m) is formed in place.
        m_new = torch.maximum(m, z.amax(dim=1))
        s = s * torch.exp(m - m_new) + z.sub_(m_new[:, None]).exp_().sum(dim=1)
        m = m_new

    return cross + (m + torch.log(s)) * psum
