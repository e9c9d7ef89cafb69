"""Progress of one attribution: events the engine and the signals send to a callback.

``attribute(..., progress=callback)`` calls ``callback(event)`` with a :class:`ProgressEvent`
when a phase starts, after each unit of work inside it (a forward pass, a batch of
Hessian-vector products, a batch of masked variants) and when it ends. The CLI renders the
events on a terminal (:class:`TerminalProgress`); a pipeline or a service can forward them.
A callback that raises stops the attribution (its exception propagates).

Before the work, :func:`work_flops` turns a request's size into an estimated count of
floating-point operations, which the CLI compares with :data:`ESTIMATE_THRESHOLD_FLOPS` to
decide whether to print the estimate first (:func:`describe_estimate`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, TextIO

from .errors import ConfigError


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


def checked_progress(progress) -> Progress | None:
    """A call's ``progress`` argument: None or a callable (ConfigError otherwise, before any work;
    a non-callable would fail only at the first event, after the forward pass)."""
    if progress is not None and not callable(progress):
        raise ConfigError("progress must be a callable receiving ProgressEvents, or None; "
                          f"got {type(progress).__name__}")
    return progress


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
        passes = f" in {_count(self.passes, 'pass', 'passes')}" if self.passes and self.unit != "pass" else ""
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


# The CLI prints its estimate before an attribution estimated above this many floating-point
# operations: about three times the demo (6e11 on SmolLM2-135M), i.e. ten seconds or more on a
# 2-core CPU (the demo takes 3.5 s there).
ESTIMATE_THRESHOLD_FLOPS = 2e12

# One Hessian-vector product costs about four forward passes over its input: the forward, its
# backward, and the forward-over-backward of the product (measured on the demo: curvature 16
# HVPs over 28 tokens take 5.2x the information term's 27 masked variants; this model says 4.6x).
HVP_FORWARDS = 4


def work_flops(n_params: int, forward_tokens: int, hvp_tokens: int, variant_tokens: int) -> float:
    """Estimated floating-point operations of one attribution, 2 x parameters per token of a
    forward pass: the captured forward over ``forward_tokens``, :data:`HVP_FORWARDS` forwards per
    token of every HVP's input (``hvp_tokens``: summed over HVPs) and the masked variants'
    passes (``variant_tokens``: the positions they recompute, summed)."""
    return 2.0 * n_params * (forward_tokens + HVP_FORWARDS * hvp_tokens + variant_tokens)


def describe_estimate(estimates: list[PhaseEstimate], flops: float, weight_bytes: int) -> list[str]:
    """The estimate as lines for a terminal: each phase's units, passes and peak memory, the total."""
    from .memory import mib as _bytes

    lines = []
    for e in estimates:
        peak = f", peak about {_bytes(e.peak_bytes)}" if e.peak_bytes else ""
        lines.append(f"  {e.describe()}{peak}")
    peak = max((e.peak_bytes for e in estimates), default=0)
    lines.append(f"  expected memory: about {_bytes(weight_bytes + peak)} "
                 f"(weights {_bytes(weight_bytes)} + largest batch {_bytes(peak)})")
    return [f"estimate: about {flops:.1e} floating-point operations"] + lines


def target_position(done: int, targets: int, hvps_per_target: tuple[int, ...]) -> tuple[int, int]:
    """(window, target tokens finished in it) after ``done`` HVPs: the curvature term runs window
    by window, and in each window target by target, ``hvps_per_target[w]`` HVPs each."""
    for window, cost in enumerate(hvps_per_target):
        if cost <= 0:
            continue
        if done < cost * targets:
            return window, done // cost
        done -= cost * targets
    return max(len(hvps_per_target) - 1, 0), targets


class TerminalProgress:
    """Renders progress events on ``stream`` (the CLI's stderr); a :data:`Progress` callback.

    live (default: whether ``stream`` is a terminal): one status line rewritten in place (at
    most every ``redraw`` seconds besides each phase's start and end, and every ``tick`` seconds
    by a background thread so that a long batch still shows its time running), erased by
    :meth:`close`. Otherwise plain lines, for long phases only: a phase that has run
    ``log_after`` seconds reports then and every ``log_every`` seconds after, and once more when
    it ends; a short attribution prints nothing.

    targets, hvps_per_target (per window): the request's target tokens and what one costs in
    HVPs, to show how many target tokens the curvature term has finished. phases: the phases
    in order, to number them. work: estimated floating-point operations per phase; with it the
    time left covers the phases still to come, at the rate of the current phase (or, before
    its first unit, of the last finished phase other than the forward pass), not only the
    current phase; nothing is said before a rate is known.
    """

    def __init__(self, stream: TextIO, live: bool | None = None, *, targets: int = 0,
                 hvps_per_target: tuple[int, ...] = (), phases: tuple[str, ...] = (),
                 work: dict[str, float] | None = None, clock: Callable[[], float] = time.monotonic,
                 log_after: float = 5.0, log_every: float = 30.0, redraw: float = 0.1, tick: float | None = 1.0):
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)()) if live is None else live
        self.targets, self.hvps_per_target, self.phases = targets, tuple(hvps_per_target), tuple(phases)
        self.work = dict(work or {})
        self.clock, self.log_after, self.log_every, self.redraw = clock, log_after, log_every, redraw
        self.tick = tick
        self._shown = False      # a live line is on the terminal
        self._last_draw = None   # clock() of the last live redraw
        self._line = None        # live: f(seconds since it was set) -> the line's text
        self._line_at = 0.0
        self._rate = None        # floating-point operations per second of the last finished phase
        self._next_log: dict[str, float] = {}
        self._batches: dict[str, int] = {}
        self._last_done: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None

    # ---------------------------------------------------------------- the callback
    def __call__(self, event: ProgressEvent) -> None:
        if event.done > self._last_done.get(event.phase, 0):
            self._batches[event.phase] = self._batches.get(event.phase, 0) + 1
        self._last_done[event.phase] = event.done
        # The forward pass is too short to time the rest (overheads dominate it): not counted.
        if event.finished and event.phase != "forward" and self.work.get(event.phase) and event.elapsed > 0:
            self._rate = self.work[event.phase] / event.elapsed
        if self.live:
            with self._lock:
                now = self.clock()
                self._line, self._line_at = (lambda since: self.describe(event, since)), now
                edge = event.done == 0 or event.finished
                if edge or self._last_draw is None or now - self._last_draw >= self.redraw:
                    self._last_draw = now
                    self._draw(self.describe(event))
            self._start_ticker()
            return
        due = self._next_log.get(event.phase, self.log_after)
        if event.finished:
            if event.phase in self._next_log:  # it logged: say that it ended
                self._write(f"heta-fast: {event.phase} done: {event.total} {event.unit} in "
                            f"{_duration(event.elapsed)}\n")
        elif event.elapsed >= due:
            self._next_log[event.phase] = event.elapsed + self.log_every
            self._write(f"heta-fast: {self.describe(event)}\n")

    def status(self, text: str) -> None:
        """A line of what is happening outside an attribution (loading the model): live only."""
        if not self.live:
            return
        with self._lock:
            self._line = lambda since: f"{text} {_duration(since)}" if since >= 1 else text
            self._line_at = self.clock()
            self._draw(text)
            self._write("\r")  # a message printed meanwhile (a cache rebuilt) starts at column 0
        self._start_ticker()

    def message(self, text: str) -> None:
        """Lines that stay (the estimate): the live line is erased first, the next event redraws it."""
        with self._lock:
            self._erase()
            self._write(text + "\n")

    def close(self) -> None:
        """Stop and erase the live line (at the end of the work, or before an error is printed)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self._line = None
            self._erase()

    # ---------------------------------------------------------------- text
    def describe(self, event: ProgressEvent, since: float = 0.0) -> str:
        """One line: phase (its number), units done, target tokens done, batches, time in the
        phase, time left; ``since``: seconds since the event (the live line's clock)."""
        number = ""
        if event.phase in self.phases:
            number = f"[{self.phases.index(event.phase) + 1}/{len(self.phases)}] "
        parts = [f"{number}{event.phase} {event.done}/{event.total} {event.unit}"]
        elapsed = event.elapsed + since
        if not event.finished:  # most important first: a narrow terminal cuts the end of the line
            left = self.remaining(event, since)
            if left is not None:
                parts.append(f"about {_duration(left)} left")
        if event.phase == "curvature" and self.targets and self.hvps_per_target:
            window, finished = target_position(event.done, self.targets, self.hvps_per_target)
            parts.append(f"{finished}/{self.targets} target tokens done")
            if len(self.hvps_per_target) > 1:
                parts.append(f"window {window + 1}/{len(self.hvps_per_target)}")
        if event.unit != "pass" and self._batches.get(event.phase):
            parts.append(_count(self._batches[event.phase], "batch", "batches"))
        if not event.finished and elapsed >= 1:
            parts.append(f"{_duration(elapsed)} in this phase")
        return ", ".join(parts)

    def remaining(self, event: ProgressEvent, since: float = 0.0) -> float | None:
        """Seconds left (None: not known yet). The current phase's rate once it has done a unit,
        else the last finished phase's; with ``work``, the phases still to come are counted too."""
        elapsed = event.elapsed + since
        index = self.phases.index(event.phase) + 1 if event.phase in self.phases else len(self.phases)
        later = sum(self.work.get(p, 0.0) for p in self.phases[index:])
        own = self.work.get(event.phase, 0.0)
        if own and event.done > 0 and elapsed > 0:
            rate = own * event.done / event.total / elapsed
            return (own * (event.total - event.done) / event.total + later) / rate
        if own and self._rate:
            left = (own * (event.total - event.done) / event.total + later) / self._rate - elapsed
            return left if left > 0 else None
        if event.done > 0 and elapsed > 0:  # no work model for this phase (flow): linear, plus what follows
            return elapsed / event.done * (event.total - event.done) + (later / self._rate if self._rate else 0.0)
        return None

    # ---------------------------------------------------------------- output
    def _start_ticker(self) -> None:
        if self.tick and self._ticker is None and not self._stop.is_set():
            self._ticker = threading.Thread(target=self._tick_loop, name="heta-progress", daemon=True)
            self._ticker.start()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                if self._line is not None and self._shown:
                    self._draw(self._line(self.clock() - self._line_at))

    def _draw(self, text: str) -> None:
        width = _columns(self.stream)
        line = f"heta-fast: {text}"
        if len(line) > width - 1:
            line = line[:max(width - 4, 1)] + "..."
        self._write(f"\r\x1b[K{line}")
        self._shown = True

    def _erase(self) -> None:
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def _write(self, text: str) -> None:
        from .render import printable

        self.stream.write(printable(text, self.stream))
        self.stream.flush()


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _columns(stream) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
