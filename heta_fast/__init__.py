"""heta-fast: fast HETA (Hessian-Enhanced Token Attribution) for decoder-only language models.

Importing this package imports neither Triton nor the model stack beyond torch, and never
queries CUDA; the Triton kernels in ``heta_fast.kernels`` load only when a GPU path runs.
"""
from __future__ import annotations

from .config import HETAConfig
from .errors import (
    ConfigError,
    FileLockedError,
    HetaError,
    InputError,
    JobCancelledError,
    JobTimeoutError,
    MemoryBudgetError,
    ModelLoadError,
    NonFiniteError,
    OutputError,
    OutputInUseError,
    QueueFullError,
    ResultFormatError,
    ServiceError,
    UnsupportedArchitectureError,
)
from .result import Attribution, FailedAttribution
from .shadowing import prefer_installed_kernels

prefer_installed_kernels()  # before anything imports transformers (heta_fast/shadowing.py)

__version__ = "0.1.0"


def __getattr__(name):
    # The engine pulls in transformers; load it on first use only.
    if name == "Attributor":
        from .engine import Attributor

        return Attributor
    raise AttributeError(f"module 'heta_fast' has no attribute {name!r}")


# Every error class of heta_fast.errors (tests/test_imports.py checks that none is missing).
__all__ = ["Attributor", "HETAConfig", "Attribution", "FailedAttribution", "HetaError", "ConfigError",
           "InputError", "ResultFormatError", "OutputError", "FileLockedError", "ModelLoadError", "NonFiniteError",
           "UnsupportedArchitectureError", "MemoryBudgetError", "OutputInUseError", "QueueFullError",
           "JobCancelledError", "JobTimeoutError", "ServiceError"]
