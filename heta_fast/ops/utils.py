"""What the op dispatchers share: whether the Triton kernel may run, and the soft-cap rule.

Nothing here imports triton or queries CUDA: triton is looked up with ``find_spec`` and only the
given tensor's device is read.
"""
from __future__ import annotations

import importlib.util
import math
import numbers

import torch

__all__ = ["check_positive", "tanh_softcap", "triton_available", "use_triton"]


def triton_available() -> bool:
    """True if triton is installed (looked up without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(t: torch.Tensor) -> bool:
    """True if an op on ``t`` should run its Triton kernel: ``t`` lives on CUDA and triton is installed."""
    return t.is_cuda and triton_available()


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
