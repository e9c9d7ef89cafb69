"""Triton kernel, launcher and wrapper for per-head value norms (see ``heta_fast.ops.value_norm``).

    vn[h, i] = sum_c | sum_d v[kv(h), i, d] * w_o[h, d, c] |

Layout of the work: grid = (cdiv(n, BLOCK_N), H).  Program (i, h) keeps its value tile
[BLOCK_N, BLOCK_D] in registers and walks d_model in tiles of BLOCK_C: each
[BLOCK_N, BLOCK_C] slice of the head output comes from one fp32 ``tl.dot`` and is
reduced with |.| immediately, so the [n, d_model] product never exists.  The head dim
is padded to a power of two (80 -> 128) with masked, zero-filled lanes; masked d_model
columns are zero and add nothing to the L1 sum.

No libdevice calls, so the kernel runs under ``TRITON_INTERPRET=1`` on CPU tensors (bf16
operands are widened to fp32 there first, see ``utils.widen_dot_operands``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (
    ACCUMULATOR,
    dot_dtype,
    expect_shape,
    heads_per_kv,
    launch,
    require_device,
    tile_configs,
    widen_dot_operands,
)

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
    UPCAST: tl.constexpr,
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
    if UPCAST:  # see utils.widen_dot_operands (bf16 under the interpreter)
        v_tile = v_tile.to(tl.float32)

    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, d_model, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        w_ptrs = w_ptr + head * stride_wh + offs_d[:, None] * stride_wd + offs_c[None, :] * stride_wc
        w_tile = tl.load(w_ptrs, mask=d_ok[:, None] & (offs_c[None, :] < d_model), other=0.0)
        if UPCAST:
            w_tile = w_tile.to(tl.float32)
        out = tl.dot(v_tile, w_tile, input_precision="ieee", out_dtype=tl.float32)
        acc += tl.sum(tl.abs(out), axis=1)

    tl.store(out_ptr + head * stride_oh + offs_n * stride_on, acc, mask=n_ok)


_CONFIGS = tile_configs({"BLOCK_N": (32, 64, 128), "BLOCK_C": (32, 64, 128)})
_KEY = ["head_dim", "d_model", "BLOCK_D", "UPCAST"]


def value_norm_triton(
    v: torch.Tensor,
    w_o: torch.Tensor,
    block_n: int | None = None,
    block_c: int | None = None,
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
    expect_shape("v", v, None, None, None)
    expect_shape("w_o", w_o, None, v.shape[2], None)
    rep = heads_per_kv(w_o.shape[0], v.shape[0])
    interpret = require_device("value_norm_triton", v, _value_norm_kernel)
    dt = dot_dtype(v, w_o)  # one dtype for both tl.dot operands
    v, w_o = v.to(dt), w_o.to(dt)
    _, n, dh = v.shape
    n_heads, _, d_model = w_o.shape
    out = torch.empty(n_heads, n, dtype=ACCUMULATOR, device=v.device)
    if n == 0:
        return out
    launch(
        _value_norm_kernel,
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), n_heads),
        (v, w_o, out, n, dh, d_model, rep, *v.stride(), *w_o.stride(), *out.stride()),
        tiles={"BLOCK_N": block_n, "BLOCK_C": block_c},
        fixed={"BLOCK_N": _INTERPRET_BLOCK_N, "BLOCK_C": _INTERPRET_BLOCK_C},
        interpret=interpret,
        configs=_CONFIGS,
        key=_KEY,
        BLOCK_D=max(16, triton.next_power_of_2(dh)),
        UPCAST=widen_dot_operands(dt, dt, interpret),
    )
    return out
