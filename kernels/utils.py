"""The kernels' shared runtime: interpreter check, launch scaffolding, dtype rule, input checks.

The kernel package is self-contained (it imports nothing from ``heta_fast``), so the few input
checks its launchers need are restated here; the ops in ``heta_fast.ops`` validate fully before
they dispatch to a kernel.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import triton
import triton.language as tl

__all__ = [
    "ACCUMULATOR",
    "check_positive",
    "dot_dtype",
    "expect_shape",
    "heads_per_kv",
    "interpreting",
    "launch",
    "require_device",
    "tanh_softcap",
    "tile_configs",
    "widen_dot_operands",
]

# The kernels' dtype rule: every accumulator and every result is float32.  tl.dot operands keep
# a 16/32-bit float dtype; float64 inputs run the float32 kernel (the GPU float64 dot is slow or
# absent), so the exact float64 paths are the ops' blocked torch ones.
ACCUMULATOR = torch.float32
_DOT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def dot_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The one dtype the tl.dot operands are cast to: the promoted input dtype if it is
    fp16/bf16/fp32, else float32."""
    dt = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return dt if dt in _DOT_DTYPES else ACCUMULATOR


def widen_dot_operands(a: torch.dtype, b: torch.dtype, interpret: bool) -> bool:
    """Whether a kernel widens its tl.dot operands of dtypes ``a``, ``b`` to float32 in registers.

    The dot runs natively only on two operands of one fp16 dtype, or of bf16 on a GPU (tensor
    cores, float32 accumulator); everything else (float32, mixed, float64) is multiplied in
    float32.  bf16 is widened under the interpreter: NumPy has no bfloat16, so the interpreter
    holds bf16 tensors as their raw uint16 bit patterns, and its tl.dot (``create_dot``, triton
    3.x, which converts fp8 only) multiplies those integers: garbage of size ~1e9 (NaN after an
    exp).  Widening is exact (bf16 is a prefix of float32, and a bf16 product is exact in
    float32), i.e. the arithmetic of the GPU's float32 accumulator.
    """
    native = (torch.float16,) if interpret else (torch.float16, torch.bfloat16)
    return not (a == b and a in native)


def interpreting(kernel=None) -> bool:
    """True when kernels run through triton's CPU interpreter (TRITON_INTERPRET=1).

    ``triton.jit`` reads TRITON_INTERPRET when it decorates, so when a kernel is given its type
    (not the current environment) decides.
    """
    if kernel is not None:
        try:
            from triton.runtime.interpreter import InterpretedFunction
        except ImportError:  # layout of other triton versions
            pass
        else:
            return isinstance(kernel, InterpretedFunction)
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def require_device(name: str, t: torch.Tensor, kernel) -> bool:
    """Whether ``kernel`` runs in the interpreter; raises unless it can run on ``t``'s device."""
    interpret = interpreting(kernel)
    if not t.is_cuda and not interpret:
        raise RuntimeError(f"{name} needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)")
    return interpret


def expect_shape(name: str, t: torch.Tensor, *dims: int | None) -> None:
    """ValueError unless ``t`` has ``len(dims)`` dimensions equal to ``dims`` (None: any size)."""
    if t.dim() != len(dims) or any(d is not None and d != s for d, s in zip(dims, t.shape)):
        want = ", ".join("*" if d is None else str(d) for d in dims)
        raise ValueError(f"{name} must have shape [{want}], got {list(t.shape)}")


def heads_per_kv(n_heads: int, n_kv: int) -> int:
    """Query heads per kv head (GQA); query head h reads kv head h // rep."""
    if n_kv < 1 or n_heads % n_kv != 0:
        raise ValueError(f"H={n_heads} is not a multiple of Hkv={n_kv}")
    return n_heads // n_kv


def check_positive(name: str, value: float | None, *, optional: bool = True) -> None:
    """ValueError unless ``value`` (a soft-cap or logit scale) is a finite number > 0 (or None if optional)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0{' or None' if optional else ''}, got {value!r}")


@triton.jit
def tanh_softcap(x, cap):
    """``cap * tanh(x / cap)`` in float32, from ``tl.exp`` only (no libdevice; runs interpreted).

    tanh(|y|) = (1 - e) / (1 + e) with e = exp(-2|y|) in (0, 1]: no overflow for any y, exact
    +-1 limits, and the sign restored afterwards.
    """
    y = x.to(tl.float32) / cap
    e = tl.exp(-2.0 * tl.abs(y))
    t = (1.0 - e) / (1.0 + e)
    return cap * tl.where(y < 0.0, -t, t)


def tile_configs(
    tiles: Mapping[str, Sequence[int]],
    *,
    num_warps: Sequence[int] = (4, 8),
    num_stages: Sequence[int] = (2, 3),
    keep: Callable[[dict], bool] | None = None,
) -> list[triton.Config]:
    """Autotune configs: every combination of the tile sizes (those ``keep`` accepts), warps, stages."""
    metas = [dict(zip(tiles, sizes)) for sizes in itertools.product(*tiles.values())]
    return [
        triton.Config(meta, num_warps=w, num_stages=st)
        for meta in metas
        if keep is None or keep(meta)
        for w in num_warps
        for st in num_stages
    ]


_AUTOTUNED: dict = {}


def launch(
    kernel,
    grid: Callable[[Mapping[str, int]], tuple],
    args: Sequence,
    *,
    tiles: Mapping[str, int | None],
    fixed: Mapping[str, int],
    interpret: bool,
    configs: Sequence[triton.Config],
    key: Sequence[str],
    **constexprs,
) -> None:
    """Launch ``kernel`` with fixed or autotuned tiles.

    Fixed tiles run under the interpreter or when the caller pins any tile: ``tiles`` maps each
    tile meta-parameter to the pinned size or None, which takes the size in ``fixed``.  Otherwise
    the kernel runs wrapped in ``triton.autotune(configs, key)`` (built once per kernel, on the
    first GPU launch).  ``grid`` maps the meta-parameters to the launch grid.
    """
    if interpret or any(v is not None for v in tiles.values()):
        meta = {name: tiles.get(name) or size for name, size in fixed.items()}
        kernel[grid(meta)](*args, **constexprs, **meta)
        return
    tuned = _AUTOTUNED.get(kernel)
    if tuned is None:
        tuned = _AUTOTUNED[kernel] = triton.autotune(configs=list(configs), key=list(key))(kernel)
    tuned[grid](*args, **constexprs)
