"""Streaming semantic-flow step (one layer of the HETA rollout gate M_T).

For targets predicted at positions p_t the rollout keeps one row vector per target,
``r`` of shape [T, n].  One layer l with per-head causal attention probabilities
``A[h]`` ([n, n], row j = query, column i = key) does

    Phi[t, h, i] = sum_j r[t, j] * A[h, j, i]          flow into key i through head h
    flow[t, i]   = sum_h Phi[t, h, i] * vn[h, i]         contribution to M_T
    r_next[t]    = 0.5 * mean_h Phi[t, h] + 0.5 * r[t]   then divided by its row sum

The attention probabilities are never stored by the model, so they are recomputed
from rotary-applied queries/keys and the per-row log-sum-exp:
``A[h, j, i] = exp(scale * q[h, j] . k[kv(h), i] - lse[h, j])`` for allowed (j, i).

Three implementations live here:

* ``flow_step_reference`` materialises ``A`` ([H, n, n]); the test oracle.
* ``flow_step_blocked`` tiles over query rows and keeps O(H * block * n) memory; the
  CPU path.
* ``flow_step`` dispatches to the Triton kernel (``heta_fast.kernels.flow``) for CUDA
  tensors and to the blocked path otherwise.

Importing this module imports neither triton nor touches CUDA.
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Tuple

import torch

__all__ = [
    "attention_probs_reference",
    "lse_reference",
    "flow_step_reference",
    "flow_step_blocked",
    "flow_step",
    "combine_heads",
    "active_rows",
]

# 64 query rows per tile measured fastest on CPU (tile stays in cache; QK^T is the
# dominant, compute-bound cost either way).
DEFAULT_BLOCK = 64


# --------------------------------------------------------------------------- helpers


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 inputs accumulate in fp32)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def allowed_mask(
    rows: torch.Tensor, cols: torch.Tensor, window: Optional[int]
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


def _gqa_rep(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query heads per kv head; query head h reads kv head h // rep."""
    n_heads, n_kv = q.shape[0], k.shape[0]
    if n_heads % n_kv != 0:
        raise ValueError(f"H={n_heads} is not a multiple of Hkv={n_kv}")
    return n_heads // n_kv


def _check_inputs(q, k, lse, r, vn, window) -> None:
    """Shape checks shared by every flow-step implementation."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError("q must be [H, n, dh] and k [Hkv, n, dh]")
    n_heads, n, dh = q.shape
    if k.shape[1:] != (n, dh):
        raise ValueError(f"k shape {tuple(k.shape)} does not match q {tuple(q.shape)}")
    _gqa_rep(q, k)
    if lse.shape != (n_heads, n):
        raise ValueError(f"lse must be [H, n]={n_heads, n}, got {tuple(lse.shape)}")
    if vn.shape != (n_heads, n):
        raise ValueError(f"vn must be [H, n]={n_heads, n}, got {tuple(vn.shape)}")
    if r.dim() != 2 or r.shape[1] != n:
        raise ValueError(f"r must be [T, n] with n={n}, got {tuple(r.shape)}")
    if window is not None and window < 1:
        raise ValueError("window must be >= 1 or None")


def active_rows(r: torch.Tensor) -> int:
    """Number of leading query rows that can contribute: 1 + last j with r[:, j] != 0.

    Rows past the last target position carry no rollout mass, so a causal flow step
    never needs them (nor keys beyond them).  Returns 0 if ``r`` is all zero.
    """
    nz = (r != 0).any(dim=0).nonzero()
    return 0 if nz.numel() == 0 else int(nz[-1, 0]) + 1


def combine_heads(
    phi: torch.Tensor, r: torch.Tensor, vn: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
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


# --------------------------------------------------------------------------- references


def _masked_scores(q, k, scale, window, dt) -> torch.Tensor:
    """[H, n, n] scale * q k^T in dtype ``dt`` with disallowed entries set to -inf."""
    rep = _gqa_rep(q, k)
    kk = k.to(dt).repeat_interleave(rep, dim=0)  # plain GQA expansion; oracle only
    scores = scale * torch.matmul(q.to(dt), kk.transpose(-1, -2))
    n = q.shape[1]
    idx = torch.arange(n, device=q.device)
    return scores.masked_fill(~allowed_mask(idx, idx, window), float("-inf"))


def attention_probs_reference(
    q: torch.Tensor, k: torch.Tensor, scale: float, window: Optional[int] = None
) -> torch.Tensor:
    """Causal (optionally windowed) softmax attention probabilities.

    Args: q [H, n, dh], k [Hkv, n, dh]. Returns A [H, n, n] (rows sum to 1), computed in
    float64 if the inputs are float64, else float32.
    """
    dt = compute_dtype(q, k)
    return torch.softmax(_masked_scores(q, k, scale, window, dt), dim=-1)


def lse_reference(
    q: torch.Tensor, k: torch.Tensor, scale: float, window: Optional[int] = None
) -> torch.Tensor:
    """Natural-log softmax denominator per query row: [H, n] (float64 if inputs are)."""
    dt = compute_dtype(q, k)
    return torch.logsumexp(_masked_scores(q, k, scale, window, dt), dim=-1)


def flow_step_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    r: torch.Tensor,
    vn: torch.Tensor,
    window: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Oracle flow step: materialises A [H, n, n] from q, k and the given lse.

    Args:
        q [H, n, dh], k [Hkv, n, dh], lse [H, n], r [T, n], vn [H, n].
    Returns:
        flow [T, n], r_next [T, n] (float64 if any input is float64, else float32).
    """
    _check_inputs(q, k, lse, r, vn, window)
    dt = compute_dtype(q, k, lse, r, vn)
    scores = _masked_scores(q, k, scale, window, dt)
    probs = torch.exp(scores - lse.to(dt)[:, :, None])  # exp(-inf) = 0 where masked
    phi = torch.einsum("tj,hji->thi", r.to(dt), probs)
    return combine_heads(phi, r, vn)


# --------------------------------------------------------------------------- blocked CPU path


def _partial_mask_ranges(j0: int, j1: int, lo: int, window: Optional[int]):
    """Key column ranges [c0, c1) of a query tile [j0, j1) that need masking.

    Keys in [lo, j0) are fully visible causally; only the diagonal block [j0, j1) and,
    with a window, the oldest keys [lo, j1 - window) are partially hidden.  Masking just
    these slices avoids a full [H, block, n] masked_fill per tile.
    """
    ranges = [(max(j0, lo), j1)]
    if window is not None and j1 - window > lo:
        ranges.append((lo, min(j1 - window, j1)))
    return ranges


def _tile_probs(q4, k_t, neg_lse4, scale, j0, j1, lo, window) -> torch.Tensor:
    """Probabilities for query rows [j0, j1) against keys [lo, j1).

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
    scores = torch.baddbmm(bias, q_tile, k_t[:, :, lo:j1], alpha=scale)
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
    window: Optional[int] = None,
    block: int = DEFAULT_BLOCK,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flow step tiled over query rows; never materialises [H, n, n].

    Working memory is one probability tile [H, block, n] plus the per-head flow
    accumulator [H, T, n].  Query rows after the last target position and tiles whose
    r columns are all zero are skipped.

    Args:
        q [H, n, dh], k [Hkv, n, dh], lse [H, n], r [T, n], vn [H, n]; any float dtype.
        window: sliding window length or None for plain causal attention.
        block: query rows per tile.
    Returns:
        flow [T, n], r_next [T, n] in float32 (float64 if any input is float64).
    """
    _check_inputs(q, k, lse, r, vn, window)
    dt = compute_dtype(q, k, lse, r, vn)
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
            probs = _tile_probs(q4, k_t, neg_lse4, scale, j0, j1, lo, window)
            # [T, B] @ [H, B, m] -> [H, T, m]: every target in one batched matmul.
            phi[:, :, lo:j1] += torch.matmul(r_c[:, j0:j1], probs)
    return combine_heads(phi.transpose(0, 1), r_c, vn)


# --------------------------------------------------------------------------- dispatcher


def _triton_available() -> bool:
    """True if triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def flow_step(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    r: torch.Tensor,
    vn: torch.Tensor,
    window: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One layer of the flow rollout: Triton on CUDA tensors, blocked torch otherwise.

    Shapes as in :func:`flow_step_blocked`; returns (flow [T, n], r_next [T, n]).
    """
    if q.is_cuda and _triton_available():
        from heta_fast.kernels.flow import flow_step_triton  # lazy: keeps triton optional

        return flow_step_triton(q, k, lse, scale, r, vn, window=window)
    return flow_step_blocked(q, k, lse, scale, r, vn, window=window)
