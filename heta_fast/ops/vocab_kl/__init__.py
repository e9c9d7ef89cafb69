"""Fused vocabulary KL: KL(P_ref[t_b] || softmax(h_b W^T + bias)) without [B, V] logits.

For a batch of final (already normed) hidden states ``h_b`` and the unembedding
matrix ``W`` we need, for every row ``b``,

    KL_b = sum_v p_v (log p_v - log q_v),   q = softmax(z_b),  z_b = h_b W^T (+ bias),

where ``p = P_ref[target_index[b]]`` is given as log-probabilities ``ref_logp``.
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

import torch

from ...dtypes import accumulation_dtype
from ..utils import use_triton
from .blocked import vocab_kl_blocked
from .common import validate_vocab_kl_inputs
from .naive import vocab_kl_reference

__all__ = [
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
    chunk_size: int = 8192,
) -> torch.Tensor:
    """KL(P_ref[target_index[b]] || softmax(hidden_b W^T + bias)) for every row b.

    Shapes: hidden [B, d], weight [V, d], ref_logp [T, V], target_index [B],
    bias [V] or None -> result [B].

    Uses the Triton kernel (fp32 result) when the tensors live on CUDA, triton
    is installed and no input is float64; otherwise :func:`vocab_kl_blocked`
    (``chunk_size`` only applies there).
    """
    if use_triton(hidden) and accumulation_dtype(hidden, weight, ref_logp, bias) != torch.float64:
        from heta_fast.kernels.vocab_kl import vocab_kl_triton  # lazy: keeps triton optional

        validate_vocab_kl_inputs(hidden, weight, ref_logp, target_index, bias)
        return vocab_kl_triton(hidden, weight, ref_logp, target_index, bias)
    return vocab_kl_blocked(hidden, weight, ref_logp, target_index, bias, chunk_size=chunk_size)
