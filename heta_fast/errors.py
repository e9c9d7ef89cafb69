"""Typed errors. Every error a user can cause derives from :class:`HetaError`.

The CLI prints ``HetaError`` subclasses as one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations


class HetaError(Exception):
    """Base class of every error heta-fast raises on purpose."""


class ConfigError(HetaError, ValueError):
    """An invalid configuration value (also a ``ValueError``)."""


class InputError(HetaError, ValueError):
    """A request the engine cannot attribute: empty prompt, empty target, too long, ..."""


class ModelLoadError(HetaError):
    """A model could not be found, downloaded, converted or loaded."""


class UnsupportedArchitectureError(HetaError):
    """The model's architecture has no module map (see ``heta_fast.model.register_architecture``)."""


class NonFiniteError(HetaError):
    """The model produced NaN or infinite values for this input."""


class MemoryBudgetError(HetaError):
    """The configured memory budget cannot hold even the smallest unit of work."""
