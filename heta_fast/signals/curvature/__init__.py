"""The curvature term S: batched curvature-vector products and three estimators.

- signal.py: S for every target and context token (windows, one operator per target)
- target.py: f = log p(x_T | x_<T) as a pure function of the embeddings or of the residual stream
- hvp.py / fisher.py: batched operators V -> H V (torch.func) and V -> G V (Gauss-Newton/Fisher)
- operators.py: which operator a config asks for, with probes per pass under the memory budget
- budget.py: those operators' sizes checked against the memory budget before any model pass
- probes.py: the seeded Rademacher probes
- exact.py / probing.py / sketch.py: the estimators; estimators.py picks one by config
- cuda_graphs.py: CUDA-only capture and replay of the batched HVP and of the group operator
- group_hessian.py: the group operator of several requests' Hessians (block-diagonal)
- group.py: several requests' products in shared passes (cross-request batching)
"""
from __future__ import annotations

import torch

from ...memory import ModelShape, check_sketch, probes_per_pass
from ...model.capture import CaptureRequest
from ...progress import PhaseEstimate
from ...windows import context_windows
from ..base import SignalContext
from .budget import check_budget, operator_layers
from .cuda_graphs import graphs_for
from .estimators import ESTIMATORS, estimate, products_needed
from .fisher import FisherOperator
from .group import CurvatureItem, batchable, curvature_group
from .hvp import HessianOperator
from .signal import curvature, products_total
from .target import TargetFunction


class CurvatureSignal:
    """S from Hessian-vector products of f; needs nothing of the capture pass."""

    name = "curvature"
    precision_stage = "curvature"  # heta_fast/precision.py: its HVPs

    def capture_request(self, model, config) -> CaptureRequest:
        return CaptureRequest()

    def estimate(self, model, request, config) -> PhaseEstimate:
        n_ctx, targets = request.n_context, request.target_ids.numel()
        shape, layers = ModelShape.of(model.model), operator_layers(model, config)
        # The longest operator runs over the whole window input up to the last target.
        windows = context_windows(n_ctx, config.window_size, config.window_overlap)
        n = min(windows[0].size, n_ctx) + targets
        probes = probes_per_pass(shape, n, layers, config.memory_budget, config.max_batch)
        hvps = products_total(n_ctx, targets, config)
        peak = probes * shape.probe_bytes(n, layers)
        if config.estimator == "sketch":  # its matrices stay alive through its passes
            peak += check_sketch(config.sketch_rank, windows[0].size, shape.d_model, config.num_probes,
                                 config.memory_budget)
        return PhaseEstimate(self.name, hvps, "HVPs", passes=-(-hvps // probes) if hvps else 0, peak_bytes=peak)

    def check_budget(self, model, request, config, cache) -> None:
        """Every operator's first probe pass, and the sketch's matrices, against the budget (budget.py)."""
        check_budget(model, request, config, graphs_for(model, config, cache))

    def compute(self, context: SignalContext) -> torch.Tensor:
        cfg = context.config
        graphs = graphs_for(context.model, cfg, context.cache_for(self.name))
        target_ids = context.request.target_ids
        hvps = context.phase(self.name, products_total(context.n_context, len(target_ids), cfg), "HVPs")
        out = curvature(context.model, context.embeds, context.positions.cpu(), target_ids, context.n_context, cfg,
                        graphs, hvps.advance)
        hvps.finish()
        return out

    def compute_group(self, contexts: list[SignalContext]) -> list[torch.Tensor]:
        """The requests' probe passes shared where the estimator allows (group.py)."""
        cfg = contexts[0].config
        if not batchable(cfg):
            return [self.compute(context) for context in contexts]
        reporters = [c.phase(self.name, products_total(c.n_context, len(c.request.target_ids), cfg), "HVPs")
                     for c in contexts]
        items = [CurvatureItem(c.embeds, c.positions.cpu(), c.request.target_ids, c.n_context, r.advance)
                 for c, r in zip(contexts, reporters)]
        out = curvature_group(contexts[0].model, items, cfg, graphs_for(contexts[0].model, cfg,
                                                                      contexts[0].cache_for(self.name)))
        for reporter in reporters:
            reporter.finish()
        return out


__all__ = ["ESTIMATORS", "CurvatureSignal", "FisherOperator", "HessianOperator", "TargetFunction", "curvature",
           "estimate", "products_needed"]
