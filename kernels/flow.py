"""Triton kernel, launcher and wrapper for the streaming flow step (see ``heta_fast.ops.flow``).

Computes the per-head flow

    Phi[t, h, i] = sum_j r[t, j] * A[h, j, i],
    A[h, j, i]   = exp(s[h, j, i] - lse[h, j])   (allowed j, i; else 0)
    s[h, j, i]   = scale * q[h, j] . k[kv(h), i]              (softcap None)
                 = c * tanh(scale * q[h, j] . k[kv(h), i] / c)  (softcap c, Gemma-2)

without ever writing A.  Layout of the work:

* grid = (cdiv(n_rows, BLOCK_N), H, cdiv(T, BLOCK_T)).  Program (i, h, t) owns the key
  tile ``[i*BLOCK_N, (i+1)*BLOCK_N)`` of head h and the target slice
  ``[t*BLOCK_T, (t+1)*BLOCK_T)``.  Its k tile stays in registers while it loops over
  query tiles j, flash-attention style (transposed: keys outer, queries inner, because
  the reduction runs over queries).
* Only query tiles that can see the key tile are visited: j >= first key (causal) and
  j < last key + window (sliding window), and j < n_rows, the row after the last
  target position (rows past it carry no rollout mass).
* Per query tile: ``s = q k^T`` with ``tl.dot(input_precision="ieee")`` (fp32
  accumulation whatever the input dtype; bf16 operands are widened to fp32 first under the
  interpreter, see ``utils.widen_dot_operands``), ``p = exp(scale*s - lse)`` (with the soft-cap
  ``c * tanh(scale*s / c)`` applied to ``scale*s`` first when given) masked to exact
  zeros, and ``acc += r_tile @ p`` (an fp32 ``tl.dot`` with T padded to >= 16, or a
  broadcast multiply-reduce for T <= 2, where padding would waste most of the work).
* The head reduction (``sum_h Phi*vn`` and ``mean_h Phi``) is O(T*H*n) and done in torch
  (:func:`_reduce_heads`, the same arithmetic as ``heta_fast.ops.flow.combine_heads``).

Only ``tl.exp`` is used (no libdevice; the soft-cap's tanh is built from it in
``utils.tanh_softcap``), so the kernel also runs under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (
    ACCUMULATOR,
    check_positive,
    dot_dtype,
    expect_shape,
    heads_per_kv,
    launch,
    require_device,
    tanh_softcap,
    tile_configs,
    widen_dot_operands,
)

__all__ = ["flow_step_triton"]

# Fixed tiles under the interpreter.  Its cost is per program and per op, not per
# element (n=333, H=9: 5.7 s with 16x16 tiles, 1.7 s with 32x32), and 32 still leaves
# tails for odd n.  Tests pin 16 (the smallest tl.dot size) where they want many tiles.
_INTERPRET_BLOCK_M = 32
_INTERPRET_BLOCK_N = 32
# Targets per program; more targets spread over the third grid axis.  Up to _SMALL_T
# targets are reduced with a broadcast multiply-sum instead of a (padded) tl.dot; the
# [BLOCK_T, BLOCK_M, BLOCK_N] product must stay small enough for registers.
_MAX_BLOCK_T = 64
_SMALL_T = 2


# ---------------------------------------------------------------------------
# device code
# ---------------------------------------------------------------------------


@triton.jit
def _flow_phi_kernel(
    q_ptr,
    k_ptr,
    lse_ptr,
    r_ptr,
    phi_ptr,
    scale,
    cap,
    n_rows,
    n_targets,
    head_dim,
    rep,
    window,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_lh,
    stride_ln,
    stride_rt,
    stride_rn,
    stride_pt,
    stride_ph,
    stride_pn,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Phi[t, h, keys of this tile] for one (key tile, head, target slice)."""
    pid_n = tl.program_id(0)
    head = tl.program_id(1)
    pid_t = tl.program_id(2)
    kv_head = head // rep

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    n_ok = offs_n < n_rows
    d_ok = offs_d < head_dim  # head dim padded to a power of two (dh = 80 -> 128)
    t_ok = offs_t < n_targets

    # k tile [BLOCK_N, BLOCK_D]; padded lanes are 0 so they add nothing to q.k.
    k_ptrs = k_ptr + kv_head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    k_tile = tl.load(k_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # see utils.widen_dot_operands (bf16 under the interpreter)
        k_tile = k_tile.to(tl.float32)
    k_t = tl.trans(k_tile)

    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)

    # Queries that can see any key of the tile: causal j >= start_n, window
    # j < start_n + BLOCK_N - 1 + window, and j < n_rows.
    m_lo = (start_n // BLOCK_M) * BLOCK_M
    m_hi = n_rows
    if HAS_WINDOW:
        m_hi = tl.minimum(m_hi, start_n + BLOCK_N - 1 + window)
    for start_m in range(m_lo, m_hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < n_rows
        q_ptrs = q_ptr + head * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
        q_tile = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q_tile = q_tile.to(tl.float32)
        lse = tl.load(lse_ptr + head * stride_lh + offs_m * stride_ln, mask=m_ok, other=0.0)

        s = tl.dot(q_tile, k_t, input_precision="ieee", out_dtype=tl.float32)
        if HAS_SOFTCAP:
            s = tanh_softcap(s * scale, cap) - lse[:, None]
        else:
            s = s * scale - lse[:, None]
        allowed = (offs_n[None, :] <= offs_m[:, None]) & m_ok[:, None] & n_ok[None, :]
        if HAS_WINDOW:
            allowed = allowed & (offs_n[None, :] > offs_m[:, None] - window)
        # Mask before exp: scores of hidden (future) keys are not bounded by lse.
        p = tl.exp(tl.where(allowed, s, float("-inf")))

        r_ptrs = r_ptr + offs_t[:, None] * stride_rt + offs_m[None, :] * stride_rn
        r_tile = tl.load(r_ptrs, mask=t_ok[:, None] & m_ok[None, :], other=0.0)
        if BLOCK_T >= 16:
            acc += tl.dot(r_tile, p, input_precision="ieee", out_dtype=tl.float32)
        else:
            # One or two targets (T = 1 is the common case): tl.dot needs >= 16 rows and
            # padding r to 16 would waste most of it; multiply-reduce is cheaper.
            acc += tl.sum(r_tile[:, :, None] * p[None, :, :], axis=1)

    phi_ptrs = phi_ptr + offs_t[:, None] * stride_pt + head * stride_ph + offs_n[None, :] * stride_pn
    tl.store(phi_ptrs, acc, mask=t_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------
# host code
# ---------------------------------------------------------------------------

# Autotuned on a GPU; n_rows changes every call, so it is deliberately not part of the key.
_CONFIGS = tile_configs(
    {"BLOCK_M": (32, 64, 128), "BLOCK_N": (32, 64, 128)},
    keep=lambda meta: meta["BLOCK_M"] * meta["BLOCK_N"] <= 64 * 128,
)
_KEY = ["head_dim", "BLOCK_D", "BLOCK_T", "HAS_WINDOW", "HAS_SOFTCAP", "UPCAST"]


def _check_inputs(q, k, lse, r, vn, window, cap) -> None:
    """The shapes the launch relies on: q [H, n, dh], k [Hkv, n, dh], lse/vn [H, n], r [T, n]."""
    expect_shape("q", q, None, None, None)
    n_heads, n, dh = q.shape
    expect_shape("k", k, None, n, dh)
    heads_per_kv(n_heads, k.shape[0])
    expect_shape("lse", lse, n_heads, n)
    expect_shape("vn", vn, n_heads, n)
    expect_shape("r", r, None, n)
    if window is not None and window < 1:
        raise ValueError("window must be >= 1 or None")
    check_positive("softcap", cap)


def _active_rows(r: torch.Tensor) -> int:
    """1 + the last query row j with r[:, j] != 0 (0 if r is all zero): later rows carry no mass."""
    nz = (r != 0).any(dim=0).nonzero()
    return 0 if nz.numel() == 0 else int(nz[-1, 0]) + 1


def _reduce_heads(phi: torch.Tensor, r: torch.Tensor, vn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """flow = sum_h phi * vn and r_next = (mean_h phi + r) / 2 over its row sum (zero rows kept)."""
    flow = torch.einsum("thn,hn->tn", phi, vn)
    r_next = 0.5 * phi.mean(dim=1) + 0.5 * r
    total = r_next.sum(dim=-1, keepdim=True)
    return flow, r_next / torch.where(total == 0, torch.ones_like(total), total)


def flow_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    r: torch.Tensor,
    vn: torch.Tensor,
    window: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    *,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One flow-rollout layer with the Triton kernel.

    Args:
        q: [H, n, dh] rotary queries (not pre-scaled); fp16/bf16/fp32.
        k: [Hkv, n, dh] rotary keys; query head h reads kv head h // (H // Hkv).
        lse: [H, n] natural-log softmax denominator per query row.
        scale: score scale (usually dh**-0.5).
        r: [T, n] rollout rows.
        vn: [H, n] value norms.
        window: sliding window length or None (plain causal).
        block_m, block_n: pin the query/key tile sizes (default: autotuned on a GPU,
            32 under the interpreter).
        softcap: attention logit soft-capping c > 0, or None (off): the score of (query j,
            key i) is c * tanh(scale * q_j . k_i / c) before masking, computed in fp32, and
            lse must be the normaliser of the capped scores.

    Returns:
        flow [T, n] and r_next [T, n] in fp32.

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before
    triton was imported.
    """
    _check_inputs(q, k, lse, r, vn, window, softcap)
    interpret = require_device("flow_step_triton", q, _flow_phi_kernel)
    # q/k in one 16/32-bit float dtype (their promoted one: a bf16 q never rounds an fp32 k),
    # lse and r in fp32.
    dt = dot_dtype(q, k)
    q, k, lse, r = q.to(dt), k.to(dt), lse.to(ACCUMULATOR), r.to(ACCUMULATOR).contiguous()
    n_heads, n, _ = q.shape
    n_targets = r.shape[0]
    phi = torch.zeros(n_targets, n_heads, n, dtype=ACCUMULATOR, device=q.device)
    n_rows = _active_rows(r)  # one host sync; bounds both grid and query loop
    if n_rows > 0 and n_targets > 0:
        _launch(q, k, lse, r, phi, scale, softcap, n_rows, window, interpret, block_m, block_n)
    return _reduce_heads(phi, r, vn.to(ACCUMULATOR))


def _launch(q, k, lse, r, phi, scale, cap, n_rows, window, interpret, block_m, block_n) -> None:
    """Pick tiles (fixed or autotuned) and launch the kernel; fills ``phi`` [T, H, n]."""
    n_heads, _, dh = q.shape
    n_targets = r.shape[0]
    block_d = max(16, triton.next_power_of_2(dh))
    # T <= _SMALL_T: exact power-of-two tile, reduced without tl.dot; else >= 16 rows.
    block_t = triton.next_power_of_2(n_targets)
    if block_t > _SMALL_T:
        block_t = min(_MAX_BLOCK_T, max(16, block_t))
    args = (
        q, k, lse, r, phi, float(scale), 1.0 if cap is None else float(cap), n_rows, n_targets, dh,
        n_heads // k.shape[0], 0 if window is None else int(window),
        *q.stride(), *k.stride(), *lse.stride(), *r.stride(), *phi.stride(),
    )
    n_t_tiles = triton.cdiv(n_targets, block_t)
    launch(
        _flow_phi_kernel,
        lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]), n_heads, n_t_tiles),
        args,
        tiles={"BLOCK_M": block_m, "BLOCK_N": block_n},
        fixed={"BLOCK_M": _INTERPRET_BLOCK_M, "BLOCK_N": _INTERPRET_BLOCK_N},
        interpret=interpret,
        configs=_CONFIGS,
        key=_KEY,
        HAS_WINDOW=window is not None,
        HAS_SOFTCAP=cap is not None,
        BLOCK_D=block_d,
        BLOCK_T=block_t,
        UPCAST=widen_dot_operands(q.dtype, k.dtype, interpret),
    )
