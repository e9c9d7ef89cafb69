"""CUDA graphs for the batched HVP: capture once per (length bucket, batch), replay per request;
and for the group operator of several requests (group.py): once per (job bucket, length bucket, batch).

A request of n tokens runs in the smallest bucket ≥ n (powers of two from 32, capped at the
model's maximum length), padded with zero rows *after* the target position: by causality the
padding cannot change f, and its rows of H v are zero. Position and token live in static
tensors, so one graph serves every target and every input of its bucket; a stream of requests
of varying length reuses a few graphs.

:class:`StaticHVP` is the computation with its static buffers: a pure function of buffer
contents, with no host synchronisation (no ``.item()``, no branch on data). It runs eagerly on
any device (the CPU tests check it against :class:`~.hvp.HessianOperator`); :class:`GraphCache`
captures it into a ``torch.cuda.CUDAGraph`` on CUDA and is never built on the CPU.

A group of J jobs of up to L rows runs in the graph of (job_bucket(J), length_bucket(L)): its
inputs are padded with copies of each job's last row and the spare job slots with the first
job's rows, and those get zero probes, so by the block-diagonal structure (group_hessian.py)
their products are zero and change no job's. :class:`StaticGroupHVP` is that computation from
static buffers, checked on the CPU against the eager :class:`~.group_hessian.GroupHessian`.
"""
from __future__ import annotations

import torch
from torch.func import grad, vjp, vmap

from ...model.adapter import ModelAdapter
from ...model.rotary import updating_rotaries
from .group_hessian import GroupHessian, padded_stack
from .target import TargetFunction

MIN_BUCKET = 32


def length_bucket(n: int, max_length: int | None = None) -> int:
    """The padded length for n tokens: the next power of two ≥ max(n, 32), at most ``max_length``."""
    bucket = MIN_BUCKET
    while bucket < n:
        bucket *= 2
    if max_length is not None:
        bucket = max(min(bucket, max_length), n)
    return bucket


def job_bucket(jobs: int) -> int:
    """The padded job count of a group pass: the next power of two ≥ jobs."""
    bucket = 1
    while bucket < jobs:
        bucket *= 2
    return bucket


class StaticHVP:
    """Batched H v for inputs of up to ``length`` tokens and ``batch`` probes, in static buffers.

    Buffers: embeds [length, d], position [] long, token [] long, vectors [batch, length, d];
    :meth:`run` returns H vectors [batch, length, d] computed from them alone.
    """

    def __init__(self, adapter: ModelAdapter, length: int, batch: int, layers: int = 0):
        d = adapter.text_config.hidden_size
        dev, dt = adapter.device, adapter.dtype
        self.adapter, self.layers = adapter, layers
        self.length, self.batch = length, batch
        self.embeds = torch.zeros(length, d, device=dev, dtype=dt)
        self.position = torch.zeros((), dtype=torch.long, device=dev)
        self.token = torch.zeros((), dtype=torch.long, device=dev)
        self.vectors = torch.zeros(batch, length, d, device=dev, dtype=dt)

    def load(self, embeds: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> None:
        """Copy one input (embeds [n, d], n ≤ length) in; rows n.. are zero padding."""
        n = embeds.shape[0]
        self.embeds[:n].copy_(embeds)
        self.embeds[n:].zero_()
        self.position.copy_(position)
        self.token.copy_(token)

    def run(self) -> torch.Tensor:
        target = TargetFunction(self.adapter, self.embeds, self.position, self.token, layers=self.layers)
        _, hvp = vjp(grad(target.log_prob), target.primal())
        (out,) = vmap(hvp)(self.vectors)
        return out


class StaticGroupHVP:
    """The group operator for up to ``jobs`` jobs of up to ``length`` rows and ``batch`` probe sets,
    in static buffers: h0 [jobs, length, d], positions [jobs] long, tokens [jobs] long, vectors
    [batch, jobs, length, d]; :meth:`run` returns (H_j vectors_j)_j [batch, jobs, length, d]."""

    def __init__(self, adapter: ModelAdapter, jobs: int, length: int, batch: int):
        d = adapter.text_config.hidden_size
        dev, dt = adapter.device, adapter.dtype
        self.adapter, self.jobs, self.length, self.batch = adapter, jobs, length, batch
        self.h0 = torch.zeros(jobs, length, d, device=dev, dtype=dt)
        self.positions = torch.zeros(jobs, dtype=torch.long, device=dev)
        self.tokens = torch.zeros(jobs, dtype=torch.long, device=dev)
        self.vectors = torch.zeros(batch, jobs, length, d, device=dev, dtype=dt)

    def load(self, inputs: list[torch.Tensor], positions: list[int], tokens: list[int]) -> None:
        """Copy a group in (per job x_j [n_j, d] with n_j ≤ length, at most ``jobs`` jobs); spare
        slots repeat the first job (their probes are zero)."""
        spare = self.jobs - len(inputs)
        self.h0.copy_(padded_stack(inputs, self.length, self.jobs))
        self.positions.copy_(torch.tensor(list(positions) + [positions[0]] * spare))
        self.tokens.copy_(torch.tensor(list(tokens) + [tokens[0]] * spare))

    def run(self) -> torch.Tensor:
        return GroupHessian.of_padded(self.adapter, self.h0, self.positions, self.tokens)(self.vectors)


class GraphedOperator:
    """The curvature-operator interface over a captured graph, for one loaded input of n tokens."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", static: StaticHVP, output: torch.Tensor, n: int):
        self.graph, self.static, self.output, self.n = graph, static, output, n
        self.applied = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.static.embeds.shape[1]

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [B, n, d], B ≤ the graph's batch -> H vectors [B, n, d] (a copy)."""
        b = vectors.shape[0]
        self.applied += b
        self.static.vectors.zero_()
        self.static.vectors[:b, : self.n].copy_(vectors)
        self.graph.replay()
        return self.output[:b, : self.n].clone()


class GraphedGroupOperator:
    """The group operator's interface over a captured graph, for one loaded group of ``jobs`` jobs
    of up to ``length`` rows; ``batch``: the probe sets the graph takes per call."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", static: StaticGroupHVP, output: torch.Tensor, jobs: int,
                 length: int):
        self.graph, self.static, self.output = graph, static, output
        self.jobs, self.length, self.batch = jobs, length, static.batch
        self.applied = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.jobs, self.length, self.static.h0.shape[2]

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [k, J, L, d], k ≤ batch -> [k, J, L, d] (a copy)."""
        k = vectors.shape[0]
        self.applied += k * self.jobs
        self.static.vectors.zero_()
        self.static.vectors[:k, : self.jobs, : self.length].copy_(vectors)
        self.graph.replay()
        return self.output[:k, : self.jobs, : self.length].clone()


class GraphCache:
    """One captured graph per (length bucket, batch), and per ("group", job bucket, length bucket,
    batch) for the group operator; built lazily, reused across requests (CUDA only)."""

    def __init__(self, adapter: ModelAdapter, layers: int = 0, warmup: int = 3):
        if adapter.device.type != "cuda":
            raise RuntimeError("CUDA graphs need the model on a CUDA device")
        self.adapter, self.layers, self.warmup = adapter, layers, warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple] = {}

    def operator(self, embeds: torch.Tensor, position: torch.Tensor, token: torch.Tensor,
                 batch: int) -> GraphedOperator:
        """Load one input (embeds [n, d]) into the graph of its (bucket, batch), capturing it on first use."""
        n = embeds.shape[0]
        key = (length_bucket(n, self.adapter.max_length), batch)
        if key not in self.graphs:
            static = StaticHVP(self.adapter, key[0], batch, self.layers)
            static.load(embeds, position, token)
            self.graphs[key] = self._capture(static)
        graph, static, output = self.graphs[key]
        static.load(embeds, position, token)
        return GraphedOperator(graph, static, output, n)

    def group_shape(self, jobs: int, length: int) -> tuple[int, int]:
        """The padded (jobs, rows) a group of ``jobs`` jobs of up to ``length`` rows runs at."""
        return job_bucket(jobs), length_bucket(length, self.adapter.max_length)

    def group_operator(self, inputs: list[torch.Tensor], positions: list[int], tokens: list[int],
                       batch: int) -> GraphedGroupOperator:
        """Load a group (per job x_j [n_j, d]) into the graph of its padded shape and ``batch``
        probe sets, capturing it on first use (the layer_subset of this cache must be 0: groups
        run on the embeddings)."""
        length = max(x.shape[0] for x in inputs)
        key = ("group", *self.group_shape(len(inputs), length), batch)
        if key not in self.graphs:
            static = StaticGroupHVP(self.adapter, key[1], key[2], batch)
            static.load(inputs, positions, tokens)
            self.graphs[key] = self._capture(static)
        graph, static, output = self.graphs[key]
        static.load(inputs, positions, tokens)
        return GraphedGroupOperator(graph, static, output, len(inputs), length)

    def _capture(self, static: StaticHVP | StaticGroupHVP):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, lazy inits)
            for _ in range(self.warmup):
                static.run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = static.run()
        return graph, static, output


def graphs_for(adapter: ModelAdapter, config, caches: dict) -> GraphCache | None:
    """The graph cache for this config, or None (CPU, graphs disabled, Fisher surrogate, rotary
    frequencies that change with the pass's length: a graph's padded length would choose them).

    caches: the curvature signal's state dict kept by the Attributor, so that every request
    through the same model reuses the captured graphs (one cache per ``layer_subset``).
    """
    if adapter.device.type != "cuda" or not config.cuda_graphs or config.use_fisher \
            or updating_rotaries(adapter.model):
        return None
    layers = config.layer_subset
    if layers not in caches:
        caches[layers] = GraphCache(adapter, layers=layers)
    return caches[layers]
