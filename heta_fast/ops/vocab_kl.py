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

Three entry points:

* :func:`vocab_kl_reference` -- plain oracle, materialises ``[B, V]`` logits.
* :func:`vocab_kl_blocked`   -- CPU (any device) path, vocab chunks + online
  logsumexp, memory ``O(B * chunk_size)``.
* :func:`vocab_kl`           -- dispatcher: Triton kernel on CUDA when triton is
  installed, blocked path otherwise.

Importing this module imports neither triton nor touches CUDA.
"""

from __future__ import annotations

import torch

__all__ = [
    "validate_vocab_kl_inputs",
    "vocab_kl",
    "vocab_kl_blocked",
    "vocab_kl_reference",
]

_INDEX_DTYPES = (torch.int32, torch.int64)


# ---------------------------------------------------------------------------
# validation / dtype helpers
# ---------------------------------------------------------------------------


def validate_vocab_kl_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[int, int, int, int]:
    """Check shapes, dtypes and devices; return ``(B, V, d, T)``.

    Expected shapes:
        hidden       [B, d]   floating point
        weight       [V, d]   floating point, V >= 1
        ref_logp     [T, V]   floating point (log-probabilities)
        target_index [B]      int32 / int64, values in [0, T)
        bias         [V] or None

    Raises:
        ValueError: on any mismatch, with a message naming the offending tensor.
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [B, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, d], got shape {tuple(weight.shape)}")
    batch, dim = hidden.shape
    vocab, weight_dim = weight.shape
    if weight_dim != dim:
        raise ValueError(
            f"hidden size mismatch: hidden is [B, d] = {tuple(hidden.shape)} but "
            f"weight is [V, d] = {tuple(weight.shape)}"
        )
    if vocab < 1:
        raise ValueError("weight must have at least one vocabulary row (V >= 1)")
    if ref_logp.dim() != 2 or ref_logp.shape[1] != vocab:
        raise ValueError(
            f"ref_logp must be [T, V] with V = {vocab}, got shape {tuple(ref_logp.shape)}"
        )
    n_targets = ref_logp.shape[0]
    if target_index.dim() != 1 or target_index.shape[0] != batch:
        raise ValueError(
            f"target_index must be [B] with B = {batch}, got shape {tuple(target_index.shape)}"
        )
    if target_index.dtype not in _INDEX_DTYPES:
        raise ValueError(f"target_index must be int32 or int64, got {target_index.dtype}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != vocab):
        raise ValueError(f"bias must be [V] with V = {vocab}, got shape {tuple(bias.shape)}")

    named = {"hidden": hidden, "weight": weight, "ref_logp": ref_logp}
    if bias is not None:
        named["bias"] = bias
    for name, tensor in named.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    named["target_index"] = target_index
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all tensors must be on the same device, got {devices}")

    if batch > 0:
        # Out-of-range targets would be an out-of-bounds read in the kernel, so
        # pay for the (tiny) reduction here.
        lo, hi = int(target_index.min()), int(target_index.max())
        if lo < 0 or hi >= n_targets:
            raise ValueError(
                f"target_index values must lie in [0, T={n_targets}), got range [{lo}, {hi}]"
            )
    return batch, vocab, dim, n_targets


def _accumulation_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 accumulate in fp32)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


# ---------------------------------------------------------------------------
# reference oracle
# ---------------------------------------------------------------------------


def vocab_kl_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_logp: torch.Tensor,
    target_index: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Oracle: materialise the logits and use ``log_softmax``.

    Args:
        hidden:       [B, d] final hidden states.
        weight:       [V, d] unembedding matrix.
        ref_logp:     [T, V] reference log-probabilities.
        target_index: [B] row of ``ref_logp`` used for each batch row.
        bias:         optional [V] logit bias.

    Returns:
        [B] KL(P_ref[target_index[b]] || softmax(z_b)); float64 if any input is
        float64, else float32.  Uses O(B * V) memory.
    """
    validate_vocab_kl_inputs(hidden, weight, ref_logp, target_index, bias)
    dtype = _accumulation_dtype(hidden, weight, ref_logp, bias)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # [B, V]
    if bias is not None:
        logits = logits + bias.to(dtype)
    log_q = torch.log_softmax(logits, dim=-1)  # [B, V]
    log_p = ref_logp.index_select(0, target_index.long()).to(dtype)  # [B, V]
    p = log_p.exp()
    # where() rather than p * (...): for p = 0, log p = -inf and 0 * -inf = NaN.
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


# ---------------------------------------------------------------------------
# blocked CPU path
# ---------------------------------------------------------------------------


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
) -> torch.Tensor:
    """Chunked-vocabulary KL with an online logsumexp; never builds [B, V].

    Per vocab chunk ``[v0, v1)`` we compute the ``[B, C]`` logits and update
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

    Returns:
        [B] float32 (float64 if any input is float64).
    """
    batch, vocab, _, _ = validate_vocab_kl_inputs(hidden, weight, ref_logp, target_index, bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = _accumulation_dtype(hidden, weight, ref_logp, bias)
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


# ---------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------


def _triton_kernel_or_none():
    """Return ``vocab_kl_triton`` if triton can be imported, else None (lazy import)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    from heta_fast.kernels.vocab_kl import vocab_kl_triton

    return vocab_kl_triton


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
    is importable and no input is float64; otherwise :func:`vocab_kl_blocked`
    (``chunk_size`` only applies there).
    """
    use_triton = hidden.is_cuda and _accumulation_dtype(hidden, weight, ref_logp, bias) != torch.float64
    if use_triton:
        kernel = _triton_kernel_or_none()
        if kernel is not None:
            return kernel(hidden, weight, ref_logp, target_index, bias)
    return vocab_kl_blocked(hidden, weight, ref_logp, target_index, bias, chunk_size=chunk_size)
