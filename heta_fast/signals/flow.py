"""Semantic flow gate M_T from one captured forward pass.

Current path: the materialised rollout of the reference (attention matrices [H, n, n] per
layer). The streaming kernel path replaces it without changing this signature.
"""
from __future__ import annotations

import torch

from ..model_adapter import ForwardCapture
from ..reference import flow_gate_reference, value_norms_reference


def flow_gate(capture: ForwardCapture, target_positions: torch.Tensor, n_context: int) -> torch.Tensor:
    """M_T for every target: [T, n_context], rows on the simplex. See docs/method.md §1."""
    norms = [value_norms_reference(v, w) for v, w in zip(capture.values, capture.out_proj)]
    return flow_gate_reference(capture.attentions, norms, target_positions, n_context)
