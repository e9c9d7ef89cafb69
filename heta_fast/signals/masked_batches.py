"""Which masked variants run together: batches of consecutive masked tokens sharing one start.

Variant i (token i masked) of a window runs positions i .. N-1 of the window's input (N: one
past its last target) on top of the unmasked prefix cache [0, i). A batch takes consecutive
variants i = a, a+1, ..., a+B-1 of one window and runs all rows from position a: row a+r
recomputes the unmasked positions a .. a+r-1 (the padding of a ragged batch, B(B-1)/2
positions per batch) so that every row has the same start, length and cache. Rows are added
while the memory model says the pass still fits the budget, up to ``max_rows`` and, when
``tokens_per_pass`` is set, only until a pass has that many token-positions: on a CPU a pass of
a few hundred positions already runs the matrix products at full speed, so wider batches would
only add padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import MemoryBudgetError


@dataclass(frozen=True)
class MaskedBatch:
    """Rows masking tokens ``start, start+1, ...`` of window ``window``, each run over ``length`` positions."""

    window: int
    start: int
    rows: int
    length: int

    @property
    def masked(self) -> range:
        return range(self.start, self.start + self.rows)

    @property
    def positions(self) -> int:
        """Token-positions this batch sends through the model (rows x length)."""
        return self.rows * self.length


def plan_batches(spans: list[tuple[int, int, int]], max_rows: int,
                 fits: Callable[[int, int, int], bool], describe: Callable[[int, int], str],
                 tokens_per_pass: int | None = None) -> list[MaskedBatch]:
    """Split every window's variants into batches.

    spans:    per window (first masked token, one past the last, N = input length to run to)
    fits:     fits(rows, length, kv_length) -> whether such a pass fits the memory budget
    describe: describe(length, kv_length) -> the error message when one variant does not fit
    tokens_per_pass: stop adding rows once rows x length reaches this (None: no such limit)

    Raises MemoryBudgetError (before any work) if even a single variant does not fit.
    """
    batches = []
    for w, (first, stop, total) in enumerate(spans):
        if first < stop and not fits(1, total - first, total):
            # The first variant is the longest of its window: if it fits, every one does.
            raise MemoryBudgetError(describe(total - first, total))
        a = first
        while a < stop:
            length = total - a
            rows = min(max_rows, stop - a)
            if tokens_per_pass is not None:
                rows = min(rows, max(1, -(-tokens_per_pass // length)))
            while rows > 1 and not fits(rows, length, total):
                rows -= 1
            batches.append(MaskedBatch(window=w, start=a, rows=rows, length=length))
            a += rows
    return batches
