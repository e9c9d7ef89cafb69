"""Split-bf16 linear: ``x @ Wᵀ (+ b)`` from bf16 products, accurate to about float32.

The float32 activation is split into two bf16 halves, ``x = x_hi + x_lo`` with
``x_hi = bf16(x)`` and ``x_lo = bf16(x - x_hi)``, and the weight is rounded to bf16 once:

    y = x_hi · W_bf16ᵀ + x_lo · W_bf16ᵀ        (bf16 products, float32 accumulation and output)

The activation keeps about 16 bits of mantissa (its error is ~2⁻¹⁷ relative against bf16's
2⁻⁹) and the result is never rounded to bf16. The weight's rounding remains: a fixed
perturbation of the model, the same in every pass. Why that split matters for HETA
(the information term's masked passes reorder their small KLs under bf16 activations, not under
bf16 weights): docs/method.md §0 and BENCHMARKS.md, "bfloat16 on a CPU with AMX".

* ``naive.split_bf16_linear_reference`` -- the oracle: the same halves and rounded weight, the
  products in float64.
* ``mkl`` -- the fast path: MKL's ``cblas_gemm_bf16bf16f32`` (bf16 × bf16 → float32, AMX where
  the CPU has it), which torch's x86 CPU build exports; found with ctypes on first use.
* :func:`split_bf16_linear` (here) -- the dispatcher: MKL when available, the oracle otherwise
  (correct, but slower than a float32 product: only for tests and hosts without MKL).

Importing this package loads no library and imports no triton.
"""
from __future__ import annotations

import torch

from . import mkl
from .naive import split_bf16_linear_reference, split_halves

__all__ = ["available", "split_bf16_linear", "split_bf16_linear_reference", "split_halves"]


def available() -> bool:
    """True if the fast path exists here (torch's CPU library exports MKL's bf16 → float32 GEMM)."""
    return mkl.gemm() is not None


def split_bf16_linear(x: torch.Tensor, weight_bf16: torch.Tensor, bias: torch.Tensor | None = None,
                      halves: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x @ weight_bf16ᵀ + bias`` from split bf16 products.

    x: [..., K] float32 (CPU); weight_bf16: [N, K] bfloat16; bias: [N] or None;
    halves: ``split_halves(x)`` when the caller already has them (several projections of one
    input share them). Returns [..., N] float32.
    """
    if halves is None:
        halves = split_halves(x)
    if x.device.type != "cpu" or not available():
        return split_bf16_linear_reference(x, weight_bf16, bias, halves)
    return mkl.split_linear(x.shape, weight_bf16, bias, halves)
