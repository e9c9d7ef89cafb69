"""What the op dispatchers share: whether the Triton kernel may run.

Nothing here imports triton or queries CUDA: triton is looked up with ``find_spec`` and only the
given tensor's device is read.
"""
from __future__ import annotations

import importlib.util

import torch

__all__ = ["triton_available", "use_triton"]


def triton_available() -> bool:
    """True if triton is installed (looked up without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(t: torch.Tensor) -> bool:
    """True if an op on ``t`` should run its Triton kernel: ``t`` lives on CUDA and triton is installed."""
    return t.is_cuda and triton_available()
