"""Semantic flow gate M_T from the engine's single forward pass, streamed layer by layer.

No attention matrix exists at any point: per layer, :func:`heta_fast.ops.flow.flow_step`
recomputes the probabilities tile by tile from the recorded post-rotary q, k and the row
log-sum-exp (A = exp(scale·q·k − lse), causal and windowed as the model masks), and fuses
Φ^(l,h) = r^(l) A^(l,h), the gate contribution Σ_h Φ^(l,h) ⊙ vn^(l,h) and the next rollout
row r^(l−1). The value norms are reduced during the capture (value_norms.py). CUDA tensors run
the Triton kernels, CPU tensors the blocked torch paths. Semantics: docs/method.md §1.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ...dtypes import accumulation_dtype
from ...errors import UnsupportedArchitectureError
from ...model.capture import Capture
from ...ops.flow import flow_step


@dataclass
class FlowRollout:
    """The streamed rollout for every target.

    gate:    [T, n] Σ over layers and heads of Φ ⊙ vn (unnormalised, every input position)
    rollout: [T, n] the rollout row after the bottom layer, r^(0) = one-hot(p_t) Â^(L) ⋯ Â^(1)
             (attention rollout, Abnar & Zuidema 2020, with the residual halves)
    received: [T, n] the attention share each position receives along the rollout, averaged
             over layers: (1/L) Σ_l r^(l) Ā^(l) (docs/method.md §1, "Attention sinks")
    """

    gate: torch.Tensor
    rollout: torch.Tensor
    received: torch.Tensor


def stream_rollout(capture: Capture, target_positions: torch.Tensor, on_layer=None) -> FlowRollout:
    """Run the flow step down every layer of the capture for targets predicted at positions [T].

    Accumulates in float32 (float64 for a float64 model) whatever the model dtype. ``on_layer()``,
    if given, is called after each layer.
    """
    first = capture.layers[0]
    n, device = first.q.shape[1], first.q.device
    # The value norms follow the model's dtype (float64 for float64, float32 for the rest).
    dtype = accumulation_dtype(first.values)
    pos = target_positions.to(device)
    r = torch.zeros(len(pos), n, dtype=dtype, device=device)
    r[torch.arange(len(pos), device=device), pos] = 1.0
    m, received = torch.zeros_like(r), torch.zeros_like(r)
    for rec, window in zip(reversed(capture.layers), reversed(capture.windows)):
        cap = {} if rec.softcap is None else {"softcap": rec.softcap}  # attention logit soft-capping
        if cap and "softcap" not in inspect.signature(flow_step).parameters:
            raise UnsupportedArchitectureError("the model soft-caps its attention logits and this release's flow "
                                               "step cannot recompute capped probabilities (softcap)")
        flow, r_next = flow_step(rec.q, rec.k, rec.lse, rec.scale, r, rec.values, window=window, **cap)  # vn [H, n]
        m += flow.to(dtype)
        # r_next = r Â with Â = ½Ā + ½I (rows of Ā sum to one), so r Ā = 2 r_next - r: the share
        # of the rollout each position receives at this layer, without another pass over A.
        received += 2 * r_next.to(dtype) - r
        r = r_next.to(dtype)
        if on_layer is not None:
            on_layer()
    return FlowRollout(gate=m, rollout=r, received=received / max(len(capture.layers), 1))


def flow_gate(capture: Capture, target_positions: torch.Tensor, n_context: int, on_layer=None) -> torch.Tensor:
    """M_T for every target: [T, n_context] (on the capture's device), rows on the simplex.

    target_positions [T]: positions p_t predicting each target; all targets roll out together.
    """
    return to_simplex(stream_rollout(capture, target_positions, on_layer).gate[:, :n_context])


def sink_positions(rollout: FlowRollout, n_context: int, special: torch.Tensor | None,
                   threshold: float) -> torch.Tensor:
    """[n_context] bool: the attention sinks among the context: special tokens (``special``
    [n_context], e.g. BOS) and positions whose received share (``rollout.received``, averaged
    over layers) exceeds ``threshold`` for any target."""
    sinks = (rollout.received[:, :n_context] > threshold).any(0).cpu()
    if special is not None:
        sinks |= special.cpu()
    return sinks


def exclude_sinks(m: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """``sinks = "exclude"``: the gate rows m [T, n] with no mass on the sinks ([n] bool), each
    row renormalised to the simplex. m may be the gate rows themselves or their unnormalised
    sums (the same result: the renormalisation cancels any positive row factor)."""
    return to_simplex(m.masked_fill(sinks.to(m.device), 0.0))


def to_simplex(m: torch.Tensor) -> torch.Tensor:
    """Rows of m [T, n] (>= 0) divided by their sums; an all-zero row stays zeros."""
    total = m.sum(-1, keepdim=True)
    # m >= 0, so a row with no flow into the context is all zeros and stays so (as the reference defines).
    return m / torch.where(total > 0, total, torch.ones_like(total))
