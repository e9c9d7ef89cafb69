"""Which curvature operator a config asks for: the Hessian or its Fisher surrogate, eager or
replayed from a CUDA graph, over the whole input or over a suffix (a constant prefix)."""
from __future__ import annotations

import torch

from ...memory import ModelShape, probes_per_pass
from ...model.adapter import ModelAdapter
from .budget import operator_layers, operator_rows, runs_graph
from .fisher import FisherOperator
from .hvp import HessianOperator
from .target import TargetFunction, prefix_keys_values


class OperatorFactory:
    """Builds the curvature operator of f = log p(token | embeds[:position+1]) under ``config``.

    embeds [n, d] (rows after ``position`` are dropped: by causality they cannot change f);
    graphs: an optional :class:`~heta_fast.signals.curvature.cuda_graphs.GraphCache` (CUDA only), used
    for the Hessian over the whole input (not the Fisher surrogate, not suffixes);
    on_products(k): if given, called after every batched product with the number of vectors k.
    """

    def __init__(self, adapter: ModelAdapter, embeds: torch.Tensor, position: int, token: int, config,
                 graphs=None, on_products=None):
        self.adapter, self.config, self.graphs, self.on_products = adapter, config, graphs, on_products
        self.x = embeds[: position + 1]
        self.position = position
        self.pos = torch.tensor(position, device=self.x.device)
        self.tok = torch.tensor(int(token), device=self.x.device)
        self.layers = operator_layers(adapter, config)
        self.shape = ModelShape.of(adapter.model)
        # Suffix operators (start > 0) need an eager forward with a key/value prefix; a captured
        # graph always runs the whole (padded) input.
        self.suffixes = not runs_graph(config, graphs)
        self._whole = None    # the operator over the whole input, shared by every caller
        self._prefix = None   # keys/values of every row, sliced for each suffix

    def __call__(self, start: int = 0):
        """(operator over rows [start, position], probe vectors per call under the memory budget)."""
        operator, chunk = self._build(start)
        if self.on_products is not None:
            operator = ReportedOperator(operator, self.on_products)
        return operator, chunk

    def _build(self, start: int):
        cfg = self.config
        if not self.suffixes:
            if start != 0:
                raise ValueError("a captured graph runs the whole input; suffix operators need the eager path")
            if self._whole is None:
                length = operator_rows(self.adapter, self.position, 0, cfg, self.graphs)
                chunk = probes_per_pass(self.shape, length, self.layers, cfg.memory_budget, cfg.max_batch)
                self._whole = self.graphs.operator(self.x, self.pos, self.tok, chunk), chunk
            return self._whole
        if start == 0 and self._whole is not None:
            return self._whole
        n = operator_rows(self.adapter, self.position, start, cfg, self.graphs)
        chunk = probes_per_pass(self.shape, n, self.layers, cfg.memory_budget, cfg.max_batch)
        prefix = None
        if start > 0:
            if self._prefix is None:
                self._prefix = prefix_keys_values(self.adapter, self.x)
            prefix = [(k[:, :, :start], v[:, :, :start]) for k, v in self._prefix]
        target = TargetFunction(self.adapter, self.x, self.pos, self.tok, layers=cfg.layer_subset, start=start,
                                prefix=prefix)
        operator = FisherOperator(target) if cfg.use_fisher else HessianOperator(target)
        if start == 0:
            self._whole = operator, chunk
        return operator, chunk


class ReportedOperator:
    """A curvature operator that reports the vectors of every batched product to ``on_products``."""

    def __init__(self, operator, on_products):
        self.operator, self.on_products = operator, on_products

    @property
    def shape(self) -> tuple[int, int]:
        return self.operator.shape

    @property
    def applied(self) -> int:
        return self.operator.applied

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [B, n, d] -> C vectors [B, n, d], then reports B."""
        out = self.operator(vectors)
        self.on_products(vectors.shape[0])
        return out
