"""Gradient baselines: saliency (gradient norm) and gradient × input.

f_t(X) = log p(y_t | prompt, y_<t) at the target's position, as a function of the input
embeddings X [n, d] (the same f as HETA's curvature term). Both methods need ∇_X f_t for every
target t: T copies of the input go through the model in one batch and one backward pass (the
copies are independent, so copy t's gradient is ∇ f_t).
"""
from __future__ import annotations

import time

import torch

from ...model.attention import attention_implementation
from ...model.exclusive import holding_the_model
from ...result import Attribution
from .common import gather_target_log_probs, make_result, prepare


@holding_the_model
def target_gradients(adapter, embeds: torch.Tensor, positions: torch.Tensor, target_ids: torch.Tensor,
                     max_batch: int = 32) -> torch.Tensor:
    """∇_X f_t for every target t: embeds [n, d] -> [T, n, d] (float32 at least)."""
    T = positions.numel()
    x = embeds[: int(positions.max()) + 1].detach()
    out = []
    for start in range(0, T, max_batch):
        rows = torch.arange(start, min(start + max_batch, T))
        xb = x.unsqueeze(0).repeat(len(rows), 1, 1).requires_grad_(True)
        with attention_implementation(adapter.model, "auto"):  # first order: the fused kernel has a backward
            f = gather_target_log_probs(adapter.log_probs(xb, positions), rows, target_ids)
            (g,) = torch.autograd.grad(f.sum(), xb)
        out.append(g.detach())
    return torch.cat(out)


@holding_the_model
def saliency(attributor, prompt, target) -> Attribution:
    """Saliency (Simonyan et al. 2014) per token: score_{t,i} = ‖∂f_t/∂x_i‖₂."""
    clock = time.perf_counter()
    prep = prepare(attributor, prompt, target)
    grads = target_gradients(attributor.adapter, prep.embeds, prep.positions, prep.target_ids,
                             attributor.config.max_batch)
    scores = grads[:, : prep.n_context].double().norm(dim=-1)
    return make_result(attributor, prep, scores, "saliency", time.perf_counter() - clock)


@holding_the_model
def input_x_gradient(attributor, prompt, target) -> Attribution:
    """Gradient × input (Shrikumar et al. 2016) per token: score_{t,i} = Σ_e x_{i,e} ∂f_t/∂x_{i,e} (signed)."""
    clock = time.perf_counter()
    prep = prepare(attributor, prompt, target)
    grads = target_gradients(attributor.adapter, prep.embeds, prep.positions, prep.target_ids,
                             attributor.config.max_batch)
    n = prep.n_context
    scores = (grads[:, :n].double() * prep.embeds[None, :n].double()).sum(-1)
    return make_result(attributor, prep, scores, "input_x_gradient", time.perf_counter() - clock)
