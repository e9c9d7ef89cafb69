"""The semantic flow gate M_T: attention rollout ending at the target, weighted by value norms.

- gate.py: the streamed rollout over the captured layers, and the gate normalised to the simplex
- value_norms.py: the value norms, reduced during the capture pass
"""
from __future__ import annotations

import torch

from ...model.capture import CaptureRequest
from ...progress import PhaseEstimate
from ..base import SignalContext, compute_each
from .gate import FlowRollout, exclude_sinks, flow_gate, sink_positions, stream_rollout, to_simplex
from .value_norms import value_norm_reducer


class FlowSignal:
    """M_T from the capture's q, k, row LSE and value norms."""

    name = "flow"
    precision_stage = None  # heta_fast/precision.py: no model pass: the rollout reads the capture

    def capture_request(self, model, config) -> CaptureRequest:
        # The capture keeps the reduction (vn [H, n]) instead of the values.
        return CaptureRequest(attention=True, reduce_values=value_norm_reducer(model))

    def estimate(self, model, request, config) -> PhaseEstimate:
        return PhaseEstimate(self.name, len(model.layers), "layers")

    def check_budget(self, model, request, config, cache) -> None:
        """Nothing to check: the rollout reads the capture, whose memory the capture pass owns."""

    def compute(self, context: SignalContext) -> torch.Tensor:
        """M_T [T, n_context]; reports the attention sinks it finds as the mark ``sinks``
        (``config.sinks = "exclude"``: they get no gate mass and the rest is renormalised)."""
        cfg, n_ctx = context.config, context.n_context
        layers = context.phase(self.name, len(context.capture.layers), "layers")
        rollout = stream_rollout(context.capture, context.positions.cpu(), layers.advance)
        layers.finish()
        sinks = sink_positions(rollout, n_ctx, context.request.special, cfg.sink_threshold)
        m = rollout.gate[:, :n_ctx].cpu()
        context.marks["sinks"] = sinks
        return exclude_sinks(m, sinks) if cfg.sinks == "exclude" else to_simplex(m)

    def compute_group(self, contexts: list[SignalContext]) -> list[torch.Tensor]:
        # No model pass to share: the rollout reads each request's own capture.
        return compute_each(self, contexts)


__all__ = ["FlowRollout", "FlowSignal", "exclude_sinks", "flow_gate", "sink_positions", "stream_rollout", "to_simplex",
           "value_norm_reducer"]
