"""Progress of one attribution: events the engine and the signals send to a callback.

``attribute(..., progress=callback)`` calls ``callback(event)`` with a :class:`ProgressEvent`
when a phase starts, after each unit of work inside it (a forward pass, a batch of
Hessian-vector products, a batch of masked variants) and when it ends. The CLI renders the
events on a terminal (:class:`TerminalProgress`); a pipeline or a service can forward them.
A callback that raises stops the attribution (its exception propagates).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """phase: "forward", "flow", "curvature" or "information"; done / total units of ``unit``
    ("pass", "HVPs", "masked variants"); elapsed: seconds since the phase started."""

    phase: str
    done: int
    total: int
    unit: str
    elapsed: float

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def remaining_seconds(self) -> float | None:
        """Linear extrapolation of the phase's remaining time (None before the first unit)."""
        if self.done <= 0:
            return None
        return self.elapsed / self.done * max(self.total - self.done, 0)


Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PhaseEstimate:
    """The work one phase will do for a request, known before it runs: ``units`` of ``unit``
    (as its progress events will count them), forward passes, and the estimated peak bytes of
    its largest batch (the memory model's; model weights excluded)."""

    phase: str
    units: int
    unit: str
    passes: int = 0
    peak_bytes: int = 0

    def describe(self) -> str:
        passes = f" in {self.passes} passes" if self.passes else ""
        return f"{self.phase}: {self.units} {self.unit}{passes}"


class PhaseReporter:
    """Counts one phase's units and reports them to ``callback`` (a no-op without one)."""

    def __init__(self, callback: Progress | None, phase: str, total: int, unit: str):
        self.callback, self.phase, self.total, self.unit = callback, phase, max(int(total), 1), unit
        self.done = 0
        self.start = time.perf_counter()
        self._send()

    def advance(self, units: int = 1) -> None:
        self.done += int(units)
        self._send()

    def finish(self) -> None:
        if self.done < self.total:
            self.done = self.total
            self._send()

    def _send(self) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(self.phase, self.done, self.total, self.unit,
                                        time.perf_counter() - self.start))


class TerminalProgress:
    """Renders events as one updating line per phase on ``stream`` (a terminal)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, event: ProgressEvent) -> None:
        eta = event.remaining_seconds
        tail = "" if eta is None or event.finished else f", about {_duration(eta)} left"
        line = f"{event.phase}: {event.done}/{event.total} {event.unit}{tail}"
        end = "\n" if event.finished else ""
        self.stream.write(f"\r\x1b[K{line}{end}")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
