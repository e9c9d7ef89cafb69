"""Which masked variants run together: batches of consecutive masked tokens of one window.

Variant i (token i masked) of a window runs positions i .. N-1 of the window's input (N: one
past its last target) on top of the unmasked prefix cache [0, i). A batch takes consecutive
variants i = a, a+1, ..., a+B-1 of one window. Two layouts:

- ``packed`` (the default): the B variants are laid end to end in one sequence of
  Σ_r (N - a - r) tokens, each segment at its own positions, attending segment by segment to
  the cached prefix before its masked token and its own earlier tokens (packing.py). No
  position is computed twice: all the batches of a window together run exactly
  Σ_i (N - i) token-positions, the irreducible work.
- ``rectangular``: every row runs from position a, so row a+r recomputes the unmasked positions
  a .. a+r-1 (B(B-1)/2 padding positions per batch). Used where the packed attention cannot be
  installed or the kernel accepts only causal masks (FlashAttention-2).

Rows are added while the memory model says the pass still fits the budget, up to ``max_rows``
and, when ``tokens_per_pass`` is set, only until a pass has that many token-positions: on a CPU
a pass of a few hundred positions already runs the matrix products at full speed.

Across requests (:func:`plan_group`, packed layout, one window per request): the variants of
several requests in order, a pass taking the variants of consecutive requests under the same
caps, so that the short last pass of one request is filled by the next one's variants. The span
estimate's shorter rows share passes the same way, each request with its own resume position.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ...errors import MemoryBudgetError

LAYOUTS = ("packed", "rectangular")


@dataclass(frozen=True)
class MaskedBatch:
    """Rows masking tokens ``start, start+1, ...`` of window ``window``; the first row runs
    ``length`` positions (start .. start+length-1), row r runs ``length - r`` when packed.

    span / resume: the span estimate's shorter rows (packed only; docs/method.md §3): row r runs
    positions start+r .. start+r+span-1 and resume .. start+length-1 when these leave a gap,
    else all of start+r .. start+length-1. span None: the exact rows.
    """

    window: int
    start: int
    rows: int
    length: int
    packed: bool = True
    span: int | None = None
    resume: int = 0

    def row(self, r: int) -> tuple[int, int]:
        """Row r's (run, length) when packed: it runs positions start+r .. start+r+run-1 and then
        the length - run positions from ``resume`` on; run == length when it does not jump. The
        one rule of a row's geometry (the packing lays rows out by it)."""
        full = self.length - r
        if self.span is not None and self.start + r + self.span < self.resume:
            return self.span, self.span + self.start + self.length - self.resume
        return full, full

    @property
    def jumps(self) -> bool:
        """Whether some row jumps over cached positions (then the pass's cache reaches ``resume``)."""
        run, length = self.row(0)
        return run < length

    @property
    def positions(self) -> int:
        """Token-positions this batch sends through the model."""
        if self.jumps:
            return sum(self.row(r)[1] for r in range(self.rows))
        if self.packed:
            return self.rows * self.length - self.rows * (self.rows - 1) // 2
        return self.rows * self.length

    @property
    def prefix(self) -> int:
        """Cached unmasked positions [0, prefix) the pass attends to."""
        if not self.packed:
            return self.start
        return max(self.start + self.rows - 1, self.resume) if self.jumps else self.start + self.rows - 1


def plan_batches(spans: list[tuple[int, int, int]], max_rows: int, fits: Callable[[MaskedBatch], bool],
                 describe: Callable[[MaskedBatch], str], tokens_per_pass: int | None = None,
                 layout: str = "packed", span: int | None = None,
                 resumes: list[int] | None = None) -> list[MaskedBatch]:
    """Split every window's variants into batches.

    spans:    per window (first masked token, one past the last, N = input length to run to)
    fits:     fits(batch) -> whether that pass fits the memory budget
    describe: describe(batch) -> the error message when a single-variant batch does not fit
    tokens_per_pass: stop adding rows once a pass has this many token-positions (None: no limit)
    layout:   "packed" or "rectangular" (see the module docstring)
    span, resumes: the span estimate's rows (see :class:`MaskedBatch`; packed only), resumes per window

    Raises MemoryBudgetError (before any work) if even a single variant does not fit.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    packed = layout == "packed"
    if span is not None and not packed:
        raise ValueError("the span estimate's rows need the packed layout")
    batches = []
    for w, (first, stop, total) in enumerate(spans):
        resume = resumes[w] if span is not None else 0

        def batch(a: int, rows: int) -> MaskedBatch:
            return MaskedBatch(w, a, rows, total - a, packed, span, resume)

        if first < stop:
            # The first variant is the longest of its window: if it fits alone, every one does.
            single = batch(first, 1)
            if not fits(single):
                raise MemoryBudgetError(describe(single))
        a = first
        while a < stop:
            rows = 1
            while rows < min(max_rows, stop - a):
                wider = batch(a, rows + 1)
                if (tokens_per_pass is not None and wider.positions > tokens_per_pass) or not fits(wider):
                    break
                rows += 1
            batches.append(batch(a, rows))
            a += rows
    return batches


@dataclass(frozen=True)
class GroupPass:
    """One packed pass over the variants of several requests: ``parts`` = (request index, its
    packed :class:`MaskedBatch`) in order; each part attends to its own request's prefix."""

    parts: tuple[tuple[int, MaskedBatch], ...]

    @property
    def rows(self) -> int:
        return sum(b.rows for _, b in self.parts)

    @property
    def positions(self) -> int:
        """Token-positions the pass sends through the model."""
        return sum(b.positions for _, b in self.parts)

    @property
    def prefix(self) -> int:
        """Cached positions the pass continues: the parts' prefixes one after the other."""
        return sum(b.prefix for _, b in self.parts)


def plan_group(spans: list[tuple[int, int, int]], max_rows: int, fits: Callable[[GroupPass], bool],
               tokens_per_pass: int | None = None, span: int | None = None,
               resumes: list[int] | None = None) -> list[GroupPass]:
    """Split the variants of several requests into packed passes, in request order.

    spans: per request (first masked token, one past the last, N = input length to run to)
    fits:  fits(pass) -> whether that pass fits the memory budget
    span, resumes: the span estimate's rows (:class:`MaskedBatch`), resumes per request

    A pass takes variants while it has at most ``max_rows`` of them, ``tokens_per_pass``
    token-positions and fits; its first variant is always taken (the caller has checked that
    every request's single variant fits, :func:`plan_batches`). For one request this gives
    :func:`plan_batches`'s batches.
    """
    passes, parts = [], []
    for item, (first, stop, total) in enumerate(spans):
        resume = resumes[item] if span is not None else 0
        for a in range(first, stop):
            variant = MaskedBatch(0, a, 1, total - a, True, span, resume)
            wider = _with_variant(parts, item, variant)
            full = GroupPass(tuple(wider))
            if parts and (full.rows > max_rows or (tokens_per_pass is not None and full.positions > tokens_per_pass)
                          or not fits(full)):
                passes.append(GroupPass(tuple(parts)))
                wider = _with_variant([], item, variant)
            parts = wider
    if parts:
        passes.append(GroupPass(tuple(parts)))
    return passes


def _with_variant(parts: list, item: int, variant: MaskedBatch) -> list:
    """parts plus request ``item``'s single-row ``variant`` (one more row of its batch if that is the last part)."""
    if parts and parts[-1][0] == item:
        last = parts[-1][1]
        return parts[:-1] + [(item, replace(last, rows=last.rows + 1))]
    return parts + [(item, variant)]
