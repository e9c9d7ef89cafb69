"""CUDA graphs for the batched HVP: capture once per (length bucket, batch), replay per request.

A request of n tokens runs in the smallest bucket ≥ n (powers of two from 32, capped at the
model's maximum length), padded with zero rows *after* the target position: by causality the
padding cannot change f, and its rows of H v are zero. Position and token live in static
tensors, so one graph serves every target and every input of its bucket; a stream of requests
of varying length reuses a few graphs.

:class:`StaticHVP` is the computation with its static buffers: a pure function of buffer
contents, with no host synchronisation (no ``.item()``, no branch on data). It runs eagerly on
any device (the CPU tests check it against :class:`~.hvp.HessianOperator`); :class:`GraphCache`
captures it into a ``torch.cuda.CUDAGraph`` on CUDA and is never built on the CPU.
"""
from __future__ import annotations

import torch
from torch.func import grad, vjp, vmap

from ...model.adapter import ModelAdapter
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


class GraphCache:
    """One captured graph per (length bucket, batch); built lazily, reused across requests (CUDA only)."""

    def __init__(self, adapter: ModelAdapter, layers: int = 0, warmup: int = 3):
        if adapter.device.type != "cuda":
            raise RuntimeError("CUDA graphs need the model on a CUDA device")
        self.adapter, self.layers, self.warmup = adapter, layers, warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], tuple] = {}

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

    def _capture(self, static: StaticHVP):
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
    """The graph cache for this config, or None (CPU, graphs disabled, Fisher surrogate).

    caches: the curvature signal's state dict kept by the Attributor, so that every request
    through the same model reuses the captured graphs (one cache per ``layer_subset``).
    """
    if adapter.device.type != "cuda" or not config.cuda_graphs or config.use_fisher:
        return None
    layers = config.layer_subset
    if layers not in caches:
        caches[layers] = GraphCache(adapter, layers=layers)
    return caches[layers]
