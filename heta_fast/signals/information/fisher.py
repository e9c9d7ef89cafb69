"""A cheap estimate of the information term: its second-order expansion (docs/method.md §3).

Opt-in (``information_estimator="fisher"``): the exact term runs n(n+1)/2 masked token-positions;
this one runs one forward pass with gradients and ``information_rank`` backward passes per
target, whatever n is.

For a small change Δz of the target's logits, KL(P ‖ P + Δ) = ½ Δzᵀ Σ Δz + O(‖Δz‖³), with
Σ = diag(p) − p pᵀ the Fisher of the categorical distribution in its logits. Masking token i
moves its input embedding by δᵢ = mᵢ − xᵢ; to first order the target's final hidden state h
moves by Jᵢ δᵢ (Jᵢ = ∂h/∂xᵢ) and its logits by G Jᵢ δᵢ, with G = ∂z/∂h = D W (W the LM head,
D the derivative of the model's final-logit transform). So

    Iᵢ ≈ ½ (Jᵢ δᵢ)ᵀ F (Jᵢ δᵢ),      F = Gᵀ Σ G   [d, d], the Fisher in the hidden state.

With F's K largest eigenpairs (λ_r, v_r), Iᵢ ≈ ½ Σ_r λ_r (g_r[i] · δᵢ)² where g_r = ∇ₓ (v_r · h)
is one backward pass that serves every token i at once. F has rank at most the number of tokens
the model gives real probability, so a few eigenpairs hold most of it; what it misses is the
expansion's error itself: masking is not a small change, and the estimate is measured against
the exact term before anyone relies on it (EVALUATION.md).
"""
from __future__ import annotations

import torch

from ...dtypes import accumulation_dtype
from ...model.adapter import ModelAdapter
from ...model.attention import attention_implementation

# F's vocabulary part keeps the most probable tokens up to this much of the probability mass
# (and at most MAX_TOKENS of them): the rest weigh their rows of W by less than this in total.
MASS = 1.0 - 1e-6
MAX_TOKENS = 8192


def hidden_fisher(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transform) -> torch.Tensor:
    """F = Gᵀ (diag(p) − p pᵀ) G [d, d] (float64) at one final hidden state ``hidden`` [d].

    weight [V, d], bias [V] or None: the LM head; transform: the model's final-logit transform
    (elementwise), whose derivative D scales G = D W.
    """
    h = hidden.detach().double()
    w = weight.double()
    z = h @ w.t() if bias is None else h @ w.t() + bias.double()
    logits, slope = torch.func.jvp(transform, (z,), (torch.ones_like(z),))  # slope: D, elementwise
    p = torch.softmax(logits, dim=-1)
    order = torch.argsort(p, descending=True)
    mass = torch.cumsum(p[order], 0)
    keep = order[: min(int((mass < MASS).sum()) + 1, MAX_TOKENS, p.numel())]
    g_kept = slope[keep, None] * w[keep]  # [M, d]
    mean = (p * slope) @ w  # Gᵀ p over the whole vocabulary [d]
    return g_kept.t() @ (p[keep, None] * g_kept) - torch.outer(mean, mean)


def top_eigenpairs(fisher: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest eigenvalues [K] and eigenvectors [K, d] of a symmetric PSD ``fisher``."""
    values, vectors = torch.linalg.eigh(fisher)
    k = min(rank, values.numel())
    return values[-k:].clamp(min=0).flip(0), vectors[:, -k:].flip(1).t()


def fisher_information(adapter: ModelAdapter, embeds: torch.Tensor, target_positions: torch.Tensor, n_context: int,
                       mask_vectors: torch.Tensor, rank: int, on_target=None) -> torch.Tensor:
    """The second-order estimate of I for every target and context token.

    embeds:           [n, d] input embeddings (context + target[:-1])
    target_positions: [T] positions predicting each target
    mask_vectors:     [n_context, d]; row i replaces x_i's input embedding
    rank:             eigenpairs of each target's hidden-state Fisher kept (backward passes per target)
    on_target():      if given, called after each target's backward passes

    Returns [T, n_context] (float64 for float64 inputs, else float32); a target predicted before
    token i gets exactly 0 (no gradient reaches it).
    """
    weight, bias, transform = adapter.unembedding(transforms=True)
    out_dtype = accumulation_dtype(embeds)
    x = embeds.detach().clone().requires_grad_(True)
    delta = mask_vectors.to(x.dtype) - x.detach()[:n_context]  # [n_context, d]
    positions = target_positions.to(x.device).long()
    # One derivative only: the fused attention of the no-grad passes has a backward; heta's
    # eager math path is for double backwards (BENCHMARKS.md, "Attention per derivative order").
    with torch.enable_grad(), attention_implementation(adapter.model, "auto"):
        hidden = adapter.final_hidden(x[None])[0, positions]  # [T, d]
        out = torch.zeros(positions.numel(), n_context, dtype=out_dtype, device=x.device)
        for t in range(positions.numel()):
            values, vectors = top_eigenpairs(hidden_fisher(hidden[t], weight, bias, transform), rank)
            # coeff[i, r] = g_r[i] · δᵢ: the move of the hidden state along v_r when token i is masked
            coeff = torch.zeros(n_context, values.numel(), dtype=torch.float64, device=x.device)
            for r, vector in enumerate(vectors):
                (grad,) = torch.autograd.grad(hidden[t] @ vector.to(hidden.dtype), x, retain_graph=True)
                coeff[:, r] = (grad[:n_context].double() * delta.double()).sum(-1)
            out[t] = (0.5 * (coeff.square() * values).sum(-1)).to(out_dtype)
            if on_target is not None:
                on_target()
    return out.detach()

