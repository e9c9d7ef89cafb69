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
    """A request the engine cannot attribute (empty prompt or target, too long, a value of a kind
    it does not accept, ...), or a data file that cannot be read."""


class ResultFormatError(InputError):
    """A results file (``Attribution.from_json``, an eval results file) that is malformed, of an
    unknown version, or unreadable; the message names the file and what is wrong."""


class OutputError(HetaError, OSError):
    """An output file that cannot be written (missing folder, a directory, no permission); also
    an ``OSError``."""


class FileLockedError(HetaError):
    """A results file that another process is writing (it holds the file's lock)."""


class ModelLoadError(HetaError):
    """A model could not be found, downloaded, converted or loaded."""


class UnsupportedArchitectureError(HetaError):
    """The model's architecture has no module map (see ``heta_fast.model.register_architecture``)."""


class NonFiniteError(HetaError):
    """The model produced NaN or infinite values for this input."""


class MemoryBudgetError(HetaError):
    """The configured memory budget cannot hold even the smallest unit of work."""


class OutputInUseError(HetaError):
    """Another heta-fast run is writing the output directory (it holds the directory's lock)."""


class QueueFullError(HetaError):
    """The service's queue holds ``max_queue`` jobs; ``retry_after`` is a guess in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelledError(HetaError):
    """A service job was cancelled (``DELETE /v1/attributions/{id}``) while it ran."""


class JobTimeoutError(HetaError):
    """A service job ran longer than the service's per-job time limit."""


class ServiceError(HetaError):
    """An error answer of the service to :class:`heta_fast.client.Client` (``status``: its HTTP
    status; 0 when it could not be reached)."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after
