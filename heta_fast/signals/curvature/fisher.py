"""The Gauss-Newton / Fisher surrogate of the curvature: G = Jᵀ (diag(p) − p pᵀ) J.

J = ∂z/∂h [V, n·d] is the Jacobian of the target position's logits z, p = softmax(z). Since
f = z_T − logsumexp(z), H = ∇²f = −G + Σ_v (∂f/∂z_v) ∇²z_v: G drops the second-order term of
the network itself and keeps the (negated) curvature of the softmax, so it is positive
semi-definite. S only uses |·|, so the sign does not matter. G v = Jᵀ (p ⊙ Jv − p (pᵀ Jv)):
one forward-mode product (Jv) and one reverse product (Jᵀu) per probe, both vmapped over the
batch, around one shared forward.
"""
from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from .hvp import settled_for
from .target import TargetFunction


class FisherOperator:
    """v -> G v at h0 = target.primal(); same interface as :class:`~.hvp.HessianOperator`."""

    def __init__(self, target: TargetFunction, h0: torch.Tensor | None = None):
        self.target = target
        self.h0 = target.primal() if h0 is None else h0
        self.applied = 0
        with settled_for(target):  # the transformed forward (hvp.py)
            logits, self._vjp = vjp(target.logits, self.h0)
        self.probs = torch.softmax(logits.detach(), dim=-1)  # [V]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.h0.shape)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [B, n, d] -> G vectors [B, n, d]."""
        self.applied += vectors.shape[0]
        vectors = vectors.to(self.h0)
        with settled_for(self.target):
            jv = vmap(lambda v: jvp(self.target.logits, (self.h0,), (v,))[1])(vectors)  # [B, V]
        p = self.probs.to(jv.dtype)
        u = p * jv - (jv @ p)[:, None] * p  # (diag(p) - p pᵀ) J v
        (out,) = vmap(self._vjp)(u.to(self.probs.dtype))
        return out
