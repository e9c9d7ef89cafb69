"""Context windows for long inputs (HETA-LR+WIN): which tokens a window attributes, and what it sees.

One definition, shared by every windowed signal (docs/method.md §3, "Windows"):

- Window w attributes the context tokens ``[start, stop)``. Windows have ``size`` tokens and
  start every ``stride = max(1, round(size * (1 - overlap)))`` tokens from 0; the last window
  is aligned to end at ``n_context`` (so it is a full window too). A context of at most
  ``size`` tokens is one window: windowing then changes nothing.
- The window's **input** is the request truncated after the window: context tokens
  ``[0, stop)`` at their own positions (``[0, start)`` is the window's *prefix*: the real
  preceding text, never masked or differentiated), followed directly by the target
  conditioning tokens ``target[:-1]`` at positions ``stop, stop + 1, ...``. Context tokens
  ``[stop, n_context)`` are not part of it. Target t is predicted at position ``stop - 1 + t``.
- A token's windowed score is the mean of its scores over the windows that contain it.

The last window's input is the full request, so its tokens' scores within that window are
exactly the unwindowed ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    """Context tokens ``[start, stop)`` attributed by one window; its input is context[:stop] + target[:-1]."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def dropped(self, n_context: int) -> int:
        """How many context tokens after the window the window's input leaves out."""
        return n_context - self.stop


def stride_of(size: int, overlap: float) -> int:
    """Distance between window starts: ``max(1, round(size * (1 - overlap)))``."""
    return max(1, int(round(size * (1.0 - overlap))))


def context_windows(n_context: int, size: int, overlap: float) -> list[Window]:
    """The windows over a context of ``n_context`` tokens (``size`` = 0: one window, no windowing).

    Every token lies in at least one window; windows are ordered by start.
    """
    if n_context < 1:
        raise ValueError(f"n_context must be >= 1, got {n_context}")
    if size <= 0 or n_context <= size:
        return [Window(0, n_context)]
    stride = stride_of(size, overlap)
    starts = list(range(0, n_context - size + 1, stride))
    if starts[-1] + size < n_context:
        starts.append(n_context - size)  # the last window ends with the context
    return [Window(s, s + size) for s in starts]


def window_input(embeds: torch.Tensor, n_context: int, window: Window) -> torch.Tensor:
    """The window's input rows: embeds [n, d] (context + target[:-1]) -> [stop + n - n_context, d]."""
    return torch.cat([embeds[: window.stop], embeds[n_context:]])


def window_positions(target_positions: torch.Tensor, n_context: int, window: Window) -> torch.Tensor:
    """Where each target is predicted in the window's input: target_positions [T] -> [T]."""
    return target_positions - window.dropped(n_context)


def average_over_windows(per_window: list[torch.Tensor], windows: list[Window], n_context: int) -> torch.Tensor:
    """Per-window scores -> per-token means.

    per_window[w]: [T, windows[w].size] scores of the window's tokens; returns [T, n_context].
    """
    first = per_window[0]
    total = torch.zeros(first.shape[0], n_context, dtype=first.dtype, device=first.device)
    count = torch.zeros(n_context, dtype=first.dtype, device=first.device)
    for scores, win in zip(per_window, windows):
        total[:, win.start : win.stop] += scores
        count[win.start : win.stop] += 1
    return total / count
