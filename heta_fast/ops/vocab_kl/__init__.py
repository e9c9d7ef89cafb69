"""Fused vocabulary KL: KL(P_ref[t_b] || softmax(h_b W^T + bias)) without [B, V] logits.

For a batch of final (already normed) hidden states ``h_b`` and the unembedding
matrix ``W`` we need, for every row ``b``,

    KL_b = sum_v p_v (log p_v - log q_v),   q = softmax(z_b),  z_b = T(h_b W^T (+ bias)),

where ``p = P_ref[target_index[b]]`` is given as log-probabilities ``ref_logp`` and T is the
model's final-logit transform (identity by default; see :func:`vocab_kl`): a scale
(``logit_scale``, Granite / Cohere) then a soft-cap (``softcap``, Gemma-2/3).
Writing ``log q_v = z_v - lse(z)`` gives

    KL_b = sum_v p_v (log p_v - z_v) + lse(z_b) * sum_v p_v,

which only needs running reductions over the vocabulary, so the logits never
have to exist as a whole.  For a normalised reference row ``sum_v p_v = 1`` and
this is the usual ``sum p (log p - z) + logsumexp(z)``; carrying ``sum_v p_v``
explicitly keeps the fast paths equal to the oracle even when a row is only
approximately normalised (e.g. rounded to fp16).

Entries with ``p_v = 0`` (``log p_v = -inf``) contribute 0 (the 0 log 0 = 0
convention), never NaN.

* ``naive.vocab_kl_reference`` -- plain oracle, materialises ``[B, V]`` logits.
* ``blocked.vocab_kl_blocked`` -- CPU (any device) path, vocab chunks + online
  logsumexp, memory ``O(B * chunk_size)``.
* :func:`vocab_kl` (here)      -- dispatcher: Triton kernel (``heta_fast.kernels.vocab_kl``)
  on CUDA when triton is installed, blocked path otherwise.

Importing this package imports neither triton nor touches CUDA.
"""

from __future__ import annotations

import contextlib

import torch

from ..utils import use_triton
from .blocked import vocab_kl_blocked
from .common import check_logit_transform, transform_logits, validate_vocab_kl_inputs
from .naive import vocab_kl_reference

__all__ = [
    "check_logit_transform",
    "transform_logits",
    "validate_vocab_kl_inputs",
    "vocab_kl",
    "vocab_kl_blocked",
    "vocab_kl_reference",
]


def vocab_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int = 8192,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """KL(P_ref[target_index[b]] || softmax(z_b)) for every row b, without [B, V] logits.

    Args:
        hidden:       [B, d] final (already normed) hidden states.
        weight:       [V, d] unembedding matrix.
        ref_logp:     [T, V] reference log-probabilities (rows of P_orig).
        target_index: [B] int32/int64, row of ``ref_logp`` compared with batch row b.
        bias:         [V] logit bias or None.
        chunk_size:   vocabulary columns per chunk of the blocked path (ignored by the kernel).
        logit_scale:  finite float > 0; the logits are multiplied by it after the bias (1.0,
                      the default, skips the multiplication).  Granite divides its logits by
                      ``logits_scaling``: pass ``1 / logits_scaling``; Cohere-style models
                      multiply by ``logit_scale``: pass it as is.
        softcap:      finite float c > 0 or None (the default, off): the logits become
                      ``c * tanh(z / c)`` after the scale (Gemma-2/3 ``final_logit_softcapping``).

    The logits are ``z_b = c * tanh((hidden_b W^T + bias) * logit_scale / c)`` (without the
    tanh when ``softcap`` is None), and the result [B] is
    ``sum_v p_v (log p_v - z_v) + logsumexp(z_b) * sum_v p_v`` with ``p = exp(ref_logp[t_b])``:
    both the online log-sum-exp and the cross term use the transformed z.  The defaults run
    exactly the untransformed computation.

    Uses the Triton kernel (fp32 result) when the tensors live on CUDA, triton
    is installed and no input is float64; otherwise :func:`vocab_kl_blocked`
    (float32 result, float64 if any input is float64).
    """
    if use_triton(hidden, weight, ref_logp, bias):
        from heta_fast.kernels.vocab_kl import vocab_kl_triton  # lazy: keeps triton optional

        validate_vocab_kl_inputs(
            hidden, weight, ref_logp, target_index, bias, logit_scale=logit_scale, softcap=softcap
        )
        return vocab_kl_triton(
            hidden, weight, ref_logp, target_index, bias, logit_scale=logit_scale, softcap=softcap
        )
    # An accumulation: its head product runs in the inputs' dtype even inside a bf16 autocast
    # stage (heta_fast/precision.py), so P_masked has float32 logits like P_orig.
    autocast = hidden.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(hidden.device.type)
    with torch.autocast(hidden.device.type, enabled=False) if autocast else contextlib.nullcontext():
        return vocab_kl_blocked(
            hidden, weight, ref_logp, target_index, bias,
            chunk_size=chunk_size, logit_scale=logit_scale, softcap=softcap,
        )
