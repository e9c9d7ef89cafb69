"""Triton kernel for per-head value norms (see ``heta_fast.ops.value_norm``).

    vn[h, i] = sum_c | sum_d v[kv(h), i, d] * w_o[h, d, c] |

Layout of the work: grid = (cdiv(n, BLOCK_N), H).  Program (i, h) keeps its value tile
[BLOCK_N, BLOCK_D] in registers and walks d_model in tiles of BLOCK_C: each
[BLOCK_N, BLOCK_C] slice of the head output comes from one fp32 ``tl.dot`` and is
reduced with |.| immediately, so the [n, d_model] product never exists.  The head dim
is padded to a power of two (80 -> 128) with masked, zero-filled lanes; masked d_model
columns are zero and add nothing to the L1 sum.

No libdevice calls, so the kernel runs under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ._runtime import interpreting

from heta_fast.ops.value_norm import check_value_norm_inputs

__all__ = ["value_norm_triton"]

# Fixed tiles under the interpreter (cost is per program/op, so moderately large tiles;
# odd n and d_model still leave tails).
_INTERPRET_BLOCK_N = 32
_INTERPRET_BLOCK_C = 64


@triton.jit
def _value_norm_kernel(
    v_ptr,
    w_ptr,
    out_ptr,
    n,
    head_dim,
    d_model,
    rep,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_wh,
    stride_wd,
    stride_wc,
    stride_oh,
    stride_on,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """vn[head, rows of this tile] = L1 norm of v_tile @ w_o[head]."""
    pid_n = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // rep

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < n
    d_ok = offs_d < head_dim

    v_ptrs = v_ptr + kv_head * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    v_tile = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)

    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, d_model, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        w_ptrs = w_ptr + head * stride_wh + offs_d[:, None] * stride_wd + offs_c[None, :] * stride_wc
        w_tile = tl.load(w_ptrs, mask=d_ok[:, None] & (offs_c[None, :] < d_model), other=0.0)
        out = tl.dot(v_tile, w_tile, input_precision="ieee", out_dtype=tl.float32)
        acc += tl.sum(tl.abs(out), axis=1)

    tl.store(out_ptr + head * stride_oh + offs_n * stride_on, acc, mask=n_ok)


@functools.lru_cache(maxsize=None)
def _autotuned_kernel():
    """The kernel wrapped in ``triton.autotune``; only built for real GPU runs."""
    configs = [
        triton.Config({"BLOCK_N": bn, "BLOCK_C": bc}, num_warps=w, num_stages=s)
        for bn in (32, 64, 128)
        for bc in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
    ]
    return triton.autotune(configs=configs, key=["head_dim", "d_model", "BLOCK_D"])(
        _value_norm_kernel
    )


def _common_dtype(v: torch.Tensor, w_o: torch.Tensor) -> torch.dtype:
    """One dtype for both tl.dot operands; float64 falls back to the fp32 kernel."""
    dt = torch.promote_types(v.dtype, w_o.dtype)
    return dt if dt in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


def value_norm_triton(
    v: torch.Tensor,
    w_o: torch.Tensor,
    block_n: Optional[int] = None,
    block_c: Optional[int] = None,
) -> torch.Tensor:
    """Value norms with the Triton kernel.

    Args:
        v: [Hkv, n, dh] values (incl. bias); fp16/bf16/fp32.
        w_o: [H, dh, d_model] per-head output projection (head output = v_i @ w_o[h]).
        block_n, block_c: pin tile sizes (default: autotuned on a GPU, fixed under the
            interpreter).

    Returns:
        vn [H, n] in fp32.

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before
    triton was imported.
    """
    rep = check_value_norm_inputs(v, w_o)
    interpret = interpreting()
    if not v.is_cuda and not interpret:
        raise RuntimeError(
            "value_norm_triton needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)"
        )
    dt = _common_dtype(v, w_o)
    v, w_o = v.to(dt), w_o.to(dt)
    _, n, dh = v.shape
    n_heads, _, d_model = w_o.shape
    out = torch.empty(n_heads, n, dtype=torch.float32, device=v.device)
    if n == 0:
        return out
    args = (v, w_o, out, n, dh, d_model, rep, *v.stride(), *w_o.stride(), *out.stride())
    block_d = max(16, triton.next_power_of_2(dh))
    if interpret or block_n is not None or block_c is not None:
        bn = block_n or _INTERPRET_BLOCK_N
        bc = block_c or _INTERPRET_BLOCK_C
        grid = (triton.cdiv(n, bn), n_heads)
        _value_norm_kernel[grid](*args, BLOCK_N=bn, BLOCK_D=block_d, BLOCK_C=bc)
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), n_heads)  # noqa: E731
        _autotuned_kernel()[grid](*args, BLOCK_D=block_d)
    return out
