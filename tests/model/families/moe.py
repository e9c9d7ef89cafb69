"""Shared by the mixture-of-experts families: the curvature is the Hessian of the active branch."""
from __future__ import annotations

import torch

from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import hvp_reference, target_log_prob
from tests.tiny_models import tiny_model


def assert_hvp_is_the_active_branchs(arch: str) -> None:
    """Top-k routing makes f piecewise smooth; the double-backward HVP is the Hessian of the piece
    the input lies in: it equals central differences of the gradient at steps too small to
    change any routing decision (checked: the selected experts stay the same)."""
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    x = adapter.embed(torch.arange(4, 10))
    v = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    routers = [layer.mlp.gate if hasattr(layer, "mlp") else layer.block_sparse_moe.gate for layer in adapter.layers]
    chosen = []
    hooks = [r.register_forward_hook(lambda mod, args, out: chosen.append(_top(out, model))) for r in routers]

    def grad_at(point):
        point = point.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(target_log_prob(adapter, point, 5, 7), point)
        return g

    eps = 1e-4  # the norms compute in float32: the differences carry ~1e-7 / eps of rounding
    try:
        g_plus, g_minus = grad_at(x + eps * v), grad_at(x - eps * v)
    finally:
        for h in hooks:
            h.remove()
    half = len(chosen) // 2
    assert all(torch.equal(a, b) for a, b in zip(chosen[:half], chosen[half:])), "a routing decision flipped"
    hv = hvp_reference(adapter, x, 5, 7, v)
    error = float(((g_plus - g_minus) / (2 * eps) - hv).abs().max() / hv.abs().max())
    assert error < 5e-3, error  # relative to the largest entry of H v
    adapter.restore()


def _top(out, model) -> torch.Tensor:
    """The selected experts [tokens, k] from a router's output (logits, or a tuple holding them)."""
    if isinstance(out, tuple):
        return out[-1].detach().clone()  # (logits, weights, indices) routers return the indices last
    k = model.config.num_experts_per_tok
    return torch.topk(out, k, dim=-1).indices
