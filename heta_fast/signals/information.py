"""Information term I_i = KL(P_orig ‖ P_masked^(i)) at each target position.

Current path: masked variants batched through full forward passes (``max_batch`` per pass).
"""
from __future__ import annotations

import torch

from ..model_adapter import ModelAdapter
from ..reference import kl_divergence


@torch.no_grad()
def information(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor,
                n_context: int, mask_vectors: torch.Tensor, orig_log_probs: torch.Tensor,
                max_batch: int = 32) -> torch.Tensor:
    """embeds [n, d]; target_positions [T]; mask_vectors [n_context, d]; orig_log_probs [T, V].

    Returns [T, n_context]. Positions after the last target are dropped (causality: they cannot
    change any target distribution).
    """
    x = embeds[: int(target_positions.max()) + 1]
    out = torch.empty(len(target_positions), n_context, dtype=orig_log_probs.dtype)
    for start in range(0, n_context, max_batch):
        idx = torch.arange(start, min(start + max_batch, n_context))
        batch = x.unsqueeze(0).repeat(len(idx), 1, 1)
        batch[torch.arange(len(idx)), idx] = mask_vectors[idx].to(x.dtype)
        logq = adapter.log_probs(batch, target_positions)  # [B, T, V]
        out[:, idx] = kl_divergence(orig_log_probs[None], logq).t().to(out.dtype)
    return out
