"""Semantic flow gate M_T from the engine's single forward pass, streamed layer by layer.

No attention matrix exists at any point: per layer, :func:`heta_fast.ops.flow.flow_step`
recomputes the probabilities tile by tile from the recorded post-rotary q, k and the row
log-sum-exp (A = exp(scale·q·k − lse), causal and windowed as the model masks), and fuses
Φ^(l,h) = r^(l) A^(l,h), the gate contribution Σ_h Φ^(l,h) ⊙ vn^(l,h) and the next rollout
row r^(l−1). The value norms were reduced during the capture by
:func:`heta_fast.ops.value_norm.value_norm` (no [H, n, d_model] head outputs, no kept values).
CUDA tensors run the Triton kernels, CPU tensors the blocked torch paths. Semantics: docs/method.md §1 (oracle:
:func:`heta_fast.reference.flow_gate_reference`).
"""
from __future__ import annotations

import torch

from ..model_adapter import StreamCapture
from ..ops.flow import flow_step


def flow_gate(capture: StreamCapture, target_positions: torch.Tensor, n_context: int) -> torch.Tensor:
    """M_T for every target: [T, n_context] (on the capture's device), rows on the simplex.

    target_positions [T]: positions p_t predicting each target; all targets roll out together.
    Accumulates in float32 (float64 for a float64 model) whatever the model dtype.
    """
    first = capture.layers[0]
    n, device = first.q.shape[1], first.q.device
    # The value norms follow the model's dtype (float64 for float64, float32 for the rest), while
    # GPT-J records float32 q, k even for a float64 model.
    dtype = torch.float64 if first.values.dtype == torch.float64 else torch.float32
    pos = target_positions.to(device)
    r = torch.zeros(len(pos), n, dtype=dtype, device=device)
    r[torch.arange(len(pos), device=device), pos] = 1.0
    m = torch.zeros_like(r)
    for rec, window in zip(reversed(capture.layers), reversed(capture.windows)):
        flow, r = flow_step(rec.q, rec.k, rec.lse, rec.scale, r, rec.values, window=window)  # values: vn [H, n]
        m += flow.to(dtype)
    m = m[:, :n_context]
    total = m.sum(-1, keepdim=True)
    # m >= 0, so a row with no flow into the context is all zeros and stays so (as the reference defines).
    return m / torch.where(total > 0, total, torch.ones_like(total))
