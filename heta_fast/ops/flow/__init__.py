"""Streaming semantic-flow step (one layer of the HETA rollout gate M_T).

For targets predicted at positions p_t the rollout keeps one row vector per target,
``r`` of shape [T, n].  One layer l with per-head causal attention probabilities
``A[h]`` ([n, n], row j = query, column i = key) does

    Phi[t, h, i] = sum_j r[t, j] * A[h, j, i]          flow into key i through head h
    flow[t, i]   = sum_h Phi[t, h, i] * vn[h, i]         contribution to M_T
    r_next[t]    = 0.5 * mean_h Phi[t, h] + 0.5 * r[t]   then divided by its row sum

The attention probabilities are never stored by the model, so they are recomputed
from rotary-applied queries/keys and the per-row log-sum-exp:
``A[h, j, i] = exp(s[h, j, i] - lse[h, j])`` for allowed (j, i), with the score
``s[h, j, i] = scale * q[h, j] . k[kv(h), i]``, or with attention logit soft-capping c
(Gemma-2's ``attn_logit_softcapping``, argument ``softcap``)
``s[h, j, i] = c * tanh(scale * q[h, j] . k[kv(h), i] / c)``.

* ``naive.flow_step_reference`` materialises ``A`` ([H, n, n]); the test oracle.
* ``blocked.flow_step_blocked`` tiles over query rows and keeps O(H * block * n) memory;
  the CPU path.
* ``flow_step`` (here) dispatches to the Triton kernel (``heta_fast.kernels.flow``) for
  CUDA tensors and to the blocked path otherwise.

Importing this package imports neither triton nor touches CUDA.
"""

from __future__ import annotations

import torch

from ..utils import use_triton
from .blocked import DEFAULT_BLOCK, flow_step_blocked
from .common import active_rows, check_inputs, combine_heads
from .naive import attention_probs_reference, flow_step_reference, lse_reference

__all__ = [
    "DEFAULT_BLOCK",
    "active_rows",
    "attention_probs_reference",
    "combine_heads",
    "flow_step",
    "flow_step_blocked",
    "flow_step_reference",
    "lse_reference",
]


def flow_step(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    r: torch.Tensor,
    vn: torch.Tensor,
    window: int | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of the flow rollout: Triton on CUDA tensors (none float64), blocked torch otherwise.

    Args:
        q: [H, n, dh] post-rotary queries, not pre-scaled.
        k: [Hkv, n, dh] post-rotary keys; query head h reads kv head h // (H // Hkv).
        lse: [H, n] natural-log softmax normaliser of every query row as the model computed
            it (over the capped scores when ``softcap`` is given).
        scale: score scale s (usually dh ** -0.5).
        r: [T, n] rollout rows of this layer; vn: [H, n] value norms.
        window: sliding window w (key i visible to query j iff j - w < i <= j) or None
            (plain causal).
        softcap: attention logit soft-capping c > 0, or None (off, the default: exactly the
            uncapped computation).  The score of (query j, key i) is
            ``c * tanh(s * q_j . k_i / c)`` before masking, and
            ``A[h, j, i] = exp(score - lse[h, j])``.

    Returns:
        flow [T, n] = sum_h Phi[:, h] * vn[h] and r_next [T, n] = (mean_h Phi + r) / 2 over its
        row sum, with Phi[t, h, i] = sum_j r[t, j] A[h, j, i]; float32 (float64 when an input is
        float64: such inputs never take the float32 Triton kernel).
    """
    if use_triton(q, k, lse, r, vn):
        from heta_fast.kernels.flow import flow_step_triton  # lazy: keeps triton optional

        check_inputs(q, k, lse, r, vn, window, softcap)
        return flow_step_triton(q, k, lse, scale, r, vn, window=window, softcap=softcap)
    return flow_step_blocked(q, k, lse, scale, r, vn, window=window, softcap=softcap)
