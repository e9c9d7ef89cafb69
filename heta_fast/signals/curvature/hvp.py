"""Batched curvature operators: V [B, n, d] -> C V [B, n, d] for C = H (or the Fisher, fisher.py).

H = ∇²_h f with f a :class:`~.target.TargetFunction`; model parameters are
closed-over constants (they never require grad), so torch.func differentiates only h.

H v is reverse-over-reverse: ``vjp(grad(f), h0)`` runs the forward and the first backward
once, keeping its graph; each batch of probes is then one vmapped backward through that graph.
(Forward-over-reverse, ``vmap(jvp(grad(f)))``, was measured at 1.9–2.6× the time per HVP on
the default model on CPU and dropped; docs/method.md §2.)

The transformed forward runs with the rotary frequencies settled for the input's length
(:func:`settled_for`): a rotary embedding that updates them per pass (longrope, dynamic) would
write a buffer in place, which torch.func forbids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, vjp, vmap

from ...model.rotary import settled_rotary
from .target import TargetFunction


class HessianOperator:
    """v -> H v at h0 = target.primal(); counts the vectors it was applied to (``applied``)."""

    def __init__(self, target: TargetFunction, h0: torch.Tensor | None = None):
        self.target = target
        self.h0 = target.primal() if h0 is None else h0
        self.applied = 0
        with settled_for(target):
            _, self._vjp = vjp(grad(target.log_prob), self.h0)

    @property
    def shape(self) -> tuple[int, int]:
        """(n, d): the operator acts on vectors shaped like h0."""
        return tuple(self.h0.shape)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [B, n, d] -> H vectors [B, n, d] (one batched pass)."""
        self.applied += vectors.shape[0]
        (out,) = vmap(self._vjp)(vectors.to(self.h0))
        return out


def settled_for(target: TargetFunction):
    """The block in which ``target``'s forward may run under a torch.func transform: the rotary
    frequencies of the model's pass over the target's input (positions 0 .. start + rows - 1)."""
    return settled_rotary(target.adapter.model, target.start + target.embeds.shape[0])


def apply_chunked(operator, vectors_of, count: int, chunk: int, consume) -> None:
    """Apply ``operator`` to ``count`` vectors in batches of at most ``chunk``.

    vectors_of(start, stop) -> [stop - start, n, d] builds one batch (so that all ``count``
    probe vectors never exist at once); consume(start, stop, result [stop - start, n, d]) reads
    what it needs from the result before the next batch is built.
    """
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        consume(start, stop, operator(vectors_of(start, stop)))


@dataclass
class ProductPlan:
    """The curvature-vector products an estimator needs, apart from the operator that computes them.

    count: vectors in all; vectors_of(start, stop) -> [stop - start, n, d] builds a batch of them;
    consume(start, stop, C V [stop - start, n, d]) reads a batch's products; finish() -> the
    estimate, once every batch was consumed. Separating the plan from the operator lets one
    operator serve the plans of several requests at once (group.py).
    """

    count: int
    vectors_of: Callable[[int, int], torch.Tensor]
    consume: Callable[[int, int, torch.Tensor], None]
    finish: Callable[[], torch.Tensor]

    def run(self, operator, chunk: int) -> torch.Tensor:
        """Apply ``operator`` to every vector in batches of at most ``chunk``; returns finish()."""
        apply_chunked(operator, self.vectors_of, self.count, chunk, self.consume)
        return self.finish()
