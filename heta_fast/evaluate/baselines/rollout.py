"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

With residual connections accounted for, each layer's head-averaged attention becomes
Â^(l) = ½ Ā^(l) + ½ I (rows renormalised), and the rollout is the product
Ã = Â^(L) Â^(L−1) ⋯ Â^(1). The score of prompt token i for the target predicted at position
p_t is Ã[p_t, i]. Computed as a row vector pushed down the layers (r ← r Â^(l)), from the
attentions of one captured forward pass.
"""
from __future__ import annotations

import time

import torch

from .common import make_result, prepare


def rollout_scores(attentions: list[torch.Tensor], positions: torch.Tensor, n_context: int) -> torch.Tensor:
    """attentions: L tensors [H, n, n] (bottom layer first) -> scores [T, n_context] (float64)."""
    n = attentions[0].shape[-1]
    r = torch.zeros(positions.numel(), n, dtype=torch.float64)
    r[torch.arange(positions.numel()), positions.cpu()] = 1.0
    eye = torch.eye(n, dtype=torch.float64)
    for attn in reversed(attentions):
        a_hat = 0.5 * attn.double().cpu().mean(0) + 0.5 * eye
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        r = r @ a_hat
    return r[:, :n_context]


def rollout(attributor, prompt, target) -> "Attribution":
    """Attention rollout per token (non-negative; a single-token target's row sums to 1)."""
    clock = time.perf_counter()
    prep = prepare(attributor, prompt, target)
    capture = attributor.adapter.capture(prep.embeds)
    scores = rollout_scores(capture.attentions, prep.positions, prep.n_context)
    return make_result(attributor, prep, scores, "rollout", time.perf_counter() - clock)
