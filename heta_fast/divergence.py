"""The KL divergence of next-token distributions, written once for every unfused use.

(The information term's fused vocabulary KL, heta_fast/ops/vocab_kl, computes the same
quantity from hidden states without materialising logits; its tests check it against this.)
"""
from __future__ import annotations

import torch


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p ‖ q) over the last axis from log-probabilities (broadcasting); 0 · log 0 = 0.

    p: the probabilities of ``log_p`` when the caller has them exactly (default: exp(log_p)).
    """
    if p is None:
        p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)
