"""Eager vocabulary KL: materialises the [B, V] logits and uses ``log_softmax``; the test oracle."""

from __future__ import annotations

import torch

from ...divergence import kl_divergence
from ...dtypes import accumulation_dtype
from .common import transform_logits, validate_vocab_kl_inputs

__all__ = ["vocab_kl_reference"]


def vocab_kl_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Oracle: materialise the logits and use ``log_softmax``.

    Args:
        hidden:       [B, d] final hidden states.
        weight:       [V, d] unembedding matrix.
        ref_logp:     [T, V] reference log-probabilities.
        target_index: [B] row of ``ref_logp`` used for each batch row.
        bias:         optional [V] logit bias.
        logit_scale:  z <- z * logit_scale after the bias (skipped at 1.0).
        softcap:      z <- c * tanh(z / c) after the scale when given (c > 0).

    Returns:
        [B] KL(P_ref[target_index[b]] || softmax(z_b)); float64 if any input is
        float64, else float32.  Uses O(B * V) memory.
    """
    validate_vocab_kl_inputs(hidden, weight, ref_logp, target_index, bias, logit_scale=logit_scale, softcap=softcap)
    dtype = accumulation_dtype(hidden, weight, ref_logp, bias)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # [B, V]
    if bias is not None:
        logits = logits + bias.to(dtype)
    logits = transform_logits(logits, logit_scale, softcap)
    log_q = torch.log_softmax(logits, dim=-1)  # [B, V]
    log_p = ref_logp.index_select(0, target_index.long()).to(dtype)  # [B, V]
    return kl_divergence(log_p, log_q)
