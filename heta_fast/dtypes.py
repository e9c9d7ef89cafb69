"""The dtype policy, written once: what precision each kind of computation runs in.

- Reductions and accumulations (softmax normalisers, KL sums, rollout rows, curvature norms)
  run in float64 when any input is float64 (the reference's precision), else in float32:
  half-precision inputs never accumulate in half precision.
- Results handed to users follow the same rule (:func:`accumulation_dtype`).
- Log-probabilities and attention probabilities of half-precision models are computed from
  float32 logits or scores (:func:`at_least_float32`).

The Triton kernels (``heta_fast.kernels``) are self-contained and restate the accumulation rule
in their own runtime; their tests check them against the ops in this package.
"""
from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(*tensors: torch.Tensor | torch.dtype | None) -> torch.dtype:
    """float64 if any given tensor (or dtype) is float64, else float32; None entries are ignored."""
    for t in tensors:
        dtype = t if isinstance(t, torch.dtype) else getattr(t, "dtype", None)
        if dtype == torch.float64:
            return torch.float64
    return torch.float32


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` upcast to float32 if it is half precision, else unchanged (no copy)."""
    return t.float() if t.dtype in HALF else t


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a computation on ``dtype`` inputs runs in: float32 for half, else ``dtype``."""
    return torch.float32 if dtype in HALF else dtype
