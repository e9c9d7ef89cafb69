"""The semantic flow gate M_T: attention rollout ending at the target, weighted by value norms.

- gate.py: the streamed rollout over the captured layers, and the gate normalised to the simplex
- value_norms.py: the value norms, reduced during the capture pass
"""
from __future__ import annotations

import torch

from ...model.capture import CaptureRequest
from ...progress import PhaseEstimate
from ..base import SignalContext
from .gate import FlowRollout, flow_gate, stream_rollout
from .value_norms import value_norm_reducer


class FlowSignal:
    """M_T from the capture's q, k, row LSE and value norms."""

    name = "flow"

    def capture_request(self, model, config) -> CaptureRequest:
        # The capture keeps the reduction (vn [H, n]) instead of the values.
        return CaptureRequest(attention=True, reduce_values=value_norm_reducer(model))

    def estimate(self, model, request, config) -> PhaseEstimate:
        return PhaseEstimate(self.name, len(model.layers), "layers")

    def compute(self, context: SignalContext) -> torch.Tensor:
        layers = context.phase(self.name, len(context.capture.layers), "layers")
        gate = flow_gate(context.capture, context.positions.cpu(), context.n_context, layers.advance).cpu()
        layers.finish()
        return gate


__all__ = ["FlowRollout", "FlowSignal", "flow_gate", "stream_rollout", "value_norm_reducer"]
