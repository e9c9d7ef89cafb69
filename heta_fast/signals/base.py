"""The contract every signal implements, and the context it computes from.

A signal declares what it needs from the engine's single forward pass
(:meth:`Signal.capture_request`) and computes its component for every target and context token
from one :class:`SignalContext`. It reads nothing of another signal and keeps its state across
calls only in ``context.cache`` (owned by the Attributor: CUDA graphs and the like).
Several requests under one config go through :meth:`Signal.compute_group`, where a signal may
share its model passes between them (cross-request batching; the scheduler's groups).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..model.capture import Capture, CaptureRequest
from ..progress import PhaseEstimate, PhaseReporter, Progress
from ..request import TokenizedRequest


@dataclass
class SignalContext:
    """Everything a signal may read for one request.

    model:     the :class:`~heta_fast.model.adapter.ModelAdapter`
    tokenizer: the model's tokenizer (mask schemes that use a special token read it)
    request:   the tokenised request (context ids [n_context], target ids [T])
    embeds:    [n, d] input embeddings of context + target[:-1], on the model's device
    positions: [T] long, the input position predicting each target (on the model's device)
    capture:   what the single forward pass left (see :class:`~heta_fast.model.capture.Capture`)
    config:    the :class:`~heta_fast.config.HETAConfig` of this call
    cache:     per-signal state kept across calls by the Attributor (``cache_for(name)``)
    progress:  the caller's progress callback, or None (see :meth:`phase`)
    marks:     per-context-token marks a signal reports for the result (name -> [n_context] bool
               on the CPU; the flow gate's ``sinks``); the engine copies them into the result
    """

    model: object
    tokenizer: object
    request: TokenizedRequest
    embeds: torch.Tensor
    positions: torch.Tensor
    capture: Capture
    config: object
    cache: dict = field(default_factory=dict)
    progress: Progress | None = None
    marks: dict = field(default_factory=dict)

    @property
    def n_context(self) -> int:
        return self.request.n_context

    def cache_for(self, name: str) -> dict:
        """The state dict of signal ``name`` (created empty on first use)."""
        return self.cache.setdefault(name, {})

    def phase(self, name: str, total: int, unit: str) -> PhaseReporter:
        """A reporter for ``total`` units of work of phase ``name`` (reports nowhere without a callback)."""
        return PhaseReporter(self.progress, name, total, unit)


class Signal(Protocol):
    """One HETA component."""

    name: str
    # The precision stage its model passes belong to (heta_fast/precision.py), None if it runs none.
    precision_stage: str | None

    def capture_request(self, model, config) -> CaptureRequest:
        """What this signal needs from the forward pass of ``model`` under ``config``."""

    def estimate(self, model, request: TokenizedRequest, config) -> PhaseEstimate:
        """The work :meth:`compute` will do for ``request`` (no model pass runs)."""

    def check_budget(self, model, request: TokenizedRequest, config, cache: dict) -> None:
        """Raise now, before any model pass, the MemoryBudgetError :meth:`compute` would raise for
        ``request`` under ``config.memory_budget`` (sized by the rule the computation uses);
        ``cache``: this signal's state (:meth:`SignalContext.cache_for`)."""

    def compute(self, context: SignalContext) -> torch.Tensor:
        """The component for every target and context token: [T, n_context] on the CPU, float32
        (float64 for a float64 model). Reports its progress through ``context.phase``."""

    def compute_group(self, contexts: list[SignalContext]) -> list[torch.Tensor]:
        """The component of several requests under one config, sharing model passes between
        them where the signal can: per context what :meth:`compute` gives, to float rounding.
        A signal that shares nothing returns :func:`compute_each`."""


def compute_each(signal: Signal, contexts: list[SignalContext]) -> list[torch.Tensor]:
    """``compute_group`` of a signal that shares no work between requests."""
    return [signal.compute(context) for context in contexts]
