"""What the op dispatchers share: when the Triton kernel runs, and the soft-cap rule.

Nothing here imports triton or queries CUDA: triton is looked up with ``find_spec`` and only the
given tensor's device is read.
"""
from __future__ import annotations

import importlib.util
import math
import numbers

import torch

from ..dtypes import accumulation_dtype

__all__ = ["check_positive", "tanh_softcap", "triton_available", "triton_device", "use_triton"]


def triton_available() -> bool:
    """True if triton is installed (looked up without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_device(t: torch.Tensor) -> bool:
    """True if a Triton kernel can run on ``t``: it lives on CUDA and triton is installed."""
    return t.is_cuda and triton_available()


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """The dispatchers' rule: an op runs its Triton kernel when its first tensor is on a Triton
    device (:func:`triton_device`) and none of ``tensors`` is float64. The kernels accumulate in
    float32 (kernels/utils.py), so float64 inputs keep the blocked torch path, whose accumulation
    is float64 (heta_fast/dtypes.py): a float64 model's numbers are float64 on every device."""
    return triton_device(tensors[0]) and accumulation_dtype(*tensors) != torch.float64


def check_positive(name: str, value: float | None, *, optional: bool = True) -> None:
    """ValueError unless ``value`` is a finite real number > 0 (or None when ``optional``).

    The rule for every soft-cap and logit scale the ops take (a bool is not a number here).
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0{' or None' if optional else ''}, got {value!r}")


def tanh_softcap(x: torch.Tensor, cap: float | None, *, inplace: bool = False) -> torch.Tensor:
    """Soft-capping ``cap * tanh(x / cap)`` (Gemma-2's attention and final-logit soft-capping).

    ``cap`` None returns ``x`` itself (off: no operation at all).  The arithmetic is the one
    transformers uses (divide, tanh, multiply) in ``x``'s dtype; ``inplace`` overwrites ``x``.
    """
    if cap is None:
        return x
    if inplace:
        return x.div_(cap).tanh_().mul_(cap)
    return torch.tanh(x / cap) * cap
