"""A toy causal LM whose next-token logits are W · Σ_i x_i: every metric can be computed by hand."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class ToyLM(nn.Module):
    def __init__(self, vocab_in: int = 8, d: int = 3, vocab_out: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab_in, d).double()
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab_in, d, generator=g, dtype=torch.float64))
        self.W = torch.randn(vocab_out, d, generator=g, dtype=torch.float64)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, use_cache=False, logits_to_keep=0):
        h = inputs_embeds.sum(1, keepdim=True)  # [B, 1, d]: the last position sees the whole input
        return SimpleNamespace(logits=h @ self.W.T)

    # hand computation: the distribution of a given (already perturbed) embedding matrix
    def probs_of(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.W @ x.sum(0), dim=-1)


def hellinger_by_hand(p, q) -> float:
    return float(((p.sqrt() - q.sqrt()) ** 2).sum().sqrt() / 2 ** 0.5)
