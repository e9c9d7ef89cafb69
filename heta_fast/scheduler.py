"""The cross-request scheduler: many requests in, results out in input order.

Requests are read ``lookahead`` at a time, tokenised and checked (a bad request becomes a
:class:`~heta_fast.result.FailedAttribution` at once and never reaches the model), grouped by
configuration and by length, and each group goes to :meth:`Attributor.attribute_group`. Results
are yielded in input order, each as soon as every earlier one is done.

``batching`` says whether a group shares its model passes (one capture forward, the signals'
``compute_group``: the curvature's probe passes of several requests in one batched pass, the
information term's masked variants of several requests in one packed pass):

- ``"on"``: shared passes; a request's numbers equal attributing it alone to float rounding,
  whatever shares its group (tests/test_scheduler.py);
- ``"off"``: one request after another, bit for bit :meth:`Attributor.attribute`;
- ``"auto"`` (the default): on where one request leaves the device idle (CUDA), off on the CPU,
  where every pass is compute-bound already and sharing them measured no faster (about 4 % of a
  record at best; BENCHMARKS.md, "Pipeline").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from .config import HETAConfig
from .errors import ConfigError, HetaError
from .progress import Progress
from .request import TokenizedRequest, tokenize_request
from .result import Attribution, FailedAttribution

# Requests read ahead of the one being answered: enough to form groups of similar length.
DEFAULT_LOOKAHEAD = 32
# Requests whose input lengths differ by at most this factor share a group (little padding, for a
# backend that pads a group into one batch).
LENGTH_RATIO = 1.5
BATCHING = ("auto", "on", "off")


def shares_passes(batching: str, device) -> bool:
    """Whether groups share model passes under ``batching`` on ``device`` (see the module docstring)."""
    if batching not in BATCHING:
        raise ConfigError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    return batching == "on" or (batching == "auto" and torch.device(device).type == "cuda")


@dataclass
class Job:
    """One request in the queue: ``key`` identifies it to the caller (a record id, an index)."""

    key: object
    prompt: object
    target: object
    config: HETAConfig | None = None
    progress: Progress | None = None
    messages: object = None  # chat messages instead of a prompt (prompt is then None)
    error: Exception | None = None  # the request could not be read: it fails at admission with this


@dataclass
class _Pending:
    order: int
    job: Job
    request: TokenizedRequest | None = None
    result: Attribution | FailedAttribution | None = None
    config: HETAConfig | None = field(default=None, repr=False)


class Scheduler:
    """Groups the requests of an iterable and runs each group through one Attributor."""

    def __init__(self, attributor, lookahead: int = DEFAULT_LOOKAHEAD, max_group: int = 8, batching: str = "auto"):
        if lookahead < 1 or max_group < 1:
            raise ValueError("lookahead and max_group must be >= 1")
        self.attributor, self.lookahead, self.max_group = attributor, lookahead, max_group
        self.batched = shares_passes(batching, attributor.adapter.device)

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[object, Attribution | FailedAttribution]]:
        """(key, result) for every job, in input order."""
        window: list[_Pending] = []
        for order, job in enumerate(jobs):
            window.append(self._admit(order, job))
            if len(window) >= self.lookahead:
                yield from self._drain(window)
                window = []
        yield from self._drain(window)

    def _admit(self, order: int, job: Job) -> _Pending:
        pending = _Pending(order, job)
        att = self.attributor
        if job.error is not None:
            pending.result = _failed(order, job, job.error)
            return pending
        try:
            pending.config = att._call_config(job.config)
            pending.request = tokenize_request(att.tokenizer, job.prompt, job.target, att.adapter.max_length,
                                               att.adapter.vocab_size, job.messages, att.sink_id(pending.config))
        except HetaError as exc:
            pending.result = _failed(order, job, exc)
        return pending

    def _drain(self, window: list[_Pending]) -> Iterator[tuple[object, Attribution | FailedAttribution]]:
        for group in self._groups([p for p in window if p.result is None]):
            results = self.attributor.attribute_group([p.request for p in group], group[0].config,
                                                      [p.job.progress for p in group], batched=self.batched)
            for pending, result in zip(group, results):
                if isinstance(result, FailedAttribution):
                    result.index, result.prompt, result.target = pending.order, pending.job.prompt, pending.job.target
                pending.result = result
        for pending in window:
            yield pending.job.key, pending.result

    def _groups(self, pending: list[_Pending]) -> list[list[_Pending]]:
        """Same configuration, lengths within LENGTH_RATIO of the group's shortest, at most max_group."""
        by_config: dict[HETAConfig, list[_Pending]] = {}
        for p in pending:
            by_config.setdefault(p.config, []).append(p)
        groups = []
        for members in by_config.values():
            members.sort(key=lambda p: p.request.input_ids.numel())
            current: list[_Pending] = []
            for p in members:
                n = p.request.input_ids.numel()
                if current and (len(current) >= self.max_group
                                or n > LENGTH_RATIO * current[0].request.input_ids.numel()):
                    groups.append(current)
                    current = []
                current.append(p)
            if current:
                groups.append(current)
        return groups


def _failed(order: int, job: Job, exc: Exception) -> FailedAttribution:
    return FailedAttribution(index=order, prompt=job.prompt, target=job.target, error_type=type(exc).__name__,
                             message=str(exc), messages=job.messages)
