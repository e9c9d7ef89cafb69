"""Curvature term S_i: block-restricted Hutchinson estimate of ‖Π_i H Π_i r‖₁.

Current path: estimator "exact" with the reference's probes, batched: B probe vectors go
through B copies of the input in one double-backward pass (the copies are independent, so
the gradient of Σ_b f(X_b) holds each copy's own gradient and Hessian-vector product).
"""
from __future__ import annotations

import torch

from ..model_adapter import ModelAdapter


def curvature_exact(adapter: ModelAdapter, embeds: torch.Tensor, position: int, token_id: int,
                    n_context: int, probes: torch.Tensor, max_batch: int = 16) -> torch.Tensor:
    """embeds [n, d]; probes [n_context, m, d] (block of probe (i, k) sits at token i); returns [n_context]."""
    x = embeds[: position + 1].detach()
    m = probes.shape[1]
    pairs = [(i, k) for i in range(n_context) for k in range(m)]
    totals = torch.zeros(n_context, dtype=torch.float64)
    pos = torch.tensor([position], device=x.device)
    for start in range(0, len(pairs), max_batch):
        chunk = pairs[start : start + max_batch]
        rows = torch.tensor([i for i, _ in chunk], device=x.device)
        batch = torch.arange(len(chunk), device=x.device)
        xb = x.unsqueeze(0).repeat(len(chunk), 1, 1).requires_grad_(True)
        v = torch.zeros_like(xb)
        v[batch, rows] = torch.stack([probes[i, k] for i, k in chunk]).to(x)
        f = adapter.log_probs(xb, pos)[:, 0, token_id].sum()
        (g,) = torch.autograd.grad(f, xb, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), xb)
        block_norms = hv[batch, rows].abs().sum(-1).double().cpu()
        totals.index_add_(0, rows.cpu(), block_norms)
    return (totals / m).to(embeds.dtype if embeds.dtype == torch.float64 else torch.float32)
