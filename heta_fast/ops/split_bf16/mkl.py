"""MKL's bf16 × bf16 → float32 GEMM, as torch's x86 CPU library exports it (no compilation).

``cblas_gemm_bf16bf16f32`` (MKL's CBLAS, LP64 integers) is looked up in ``libtorch_cpu`` on the
first call; a build without it (another BLAS, another platform) gives None and the dispatcher
falls back to the oracle.
"""
from __future__ import annotations

import ctypes
import functools
import os

import torch

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS_LAYOUT / CBLAS_TRANSPOSE values
_INT32_MAX = 2**31 - 1


@functools.lru_cache(maxsize=None)
def gemm():
    """The ctypes function, or None where torch's CPU library does not export it."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).cblas_gemm_bf16bf16f32
    except (OSError, AttributeError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    return fn


def split_linear(shape: torch.Size, weight_bf16: torch.Tensor, bias: torch.Tensor | None,
                 halves: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Out [..., N] float32 = hi @ Wᵀ + lo @ Wᵀ (+ bias), two MKL calls into one output
    (the second accumulates with beta = 1). hi, lo: [M, K] bf16 contiguous; weight: [N, K] bf16."""
    hi, lo = halves
    m, k = hi.shape
    weight = weight_bf16.contiguous()
    n = weight.shape[0]
    if max(m, n, k) > _INT32_MAX:  # LP64 interface
        raise ValueError(f"split_bf16_linear: a dimension of ({m}, {k}) x ({n}, {k}) exceeds 32-bit indexing")
    out = torch.empty(m, n, dtype=torch.float32) if k else torch.zeros(m, n)
    if m and n and k:
        fn = gemm()
        for beta, part in ((0.0, hi), (1.0, lo)):
            fn(_ROW_MAJOR, _NO_TRANS, _TRANS, m, n, k, 1.0, part.data_ptr(), k, weight.data_ptr(), k, beta,
               out.data_ptr(), n)
    if bias is not None:
        out += bias.float()
    return out.reshape(*shape[:-1], n)
