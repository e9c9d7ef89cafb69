"""estimator="sketch": a rank-k Nyström sketch of the curvature, read block by block.

Restricted to the attributed tokens' blocks (the rows R of h), C_RR ≈ Y W⁺ Yᵀ with a Gaussian
test matrix Ω [R·d, k], Y = C Ω (k products, independent of the number of tokens) and
W = Ωᵀ Y (k × k, symmetric). The pseudo-inverse drops eigenvalues of W below ``rcond`` times
the largest in magnitude (C is indefinite; plain Nyström, no PSD shift). Then for every token
i and probe r, C_ii r ≈ Y_i W⁺ (Y_iᵀ r) with Y_i = Π_i Y [d, k]: the reference's probes are
read from the sketch at O(R·m·k·d) cost, no further model passes. Exact when rank C_RR ≤ k;
its error is the part of C outside the sketched range (docs/method.md §2).
"""
from __future__ import annotations

import torch

from .hvp import ProductPlan

_OMEGA_STREAM = 0x0E6A


def sketch_matrix(num_rows: int, d: int, rank: int, seed: int) -> torch.Tensor:
    """The seeded Gaussian test matrix Ω as [rank, num_rows, d] (float64)."""
    g = torch.Generator().manual_seed(int(seed) * 65537 + _OMEGA_STREAM)
    return torch.randn(rank, num_rows, d, generator=g, dtype=torch.float64)


def pinv_symmetric(w: torch.Tensor, rcond: float = 1e-6) -> torch.Tensor:
    """Pseudo-inverse of a (numerically) symmetric matrix [k, k] by eigen-truncation."""
    w = 0.5 * (w + w.t())
    vals, vecs = torch.linalg.eigh(w)
    keep = vals.abs() > rcond * vals.abs().max().clamp_min(torch.finfo(w.dtype).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, vals, torch.ones_like(vals)), torch.zeros_like(vals))
    return (vecs * inv) @ vecs.t()


def nystrom_sketch(operator, rows: torch.Tensor, omega: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Y_R = (C Ω)_R [k, R, d] and W⁺ [k, k] (float64) from k curvature-vector products."""
    return sketch_plan(operator.shape, rows, omega, lambda y, w_pinv: (y, w_pinv)).run(operator, chunk)


def nystrom_block_hutchinson(operator, rows: torch.Tensor, probes: torch.Tensor, omega: torch.Tensor,
                             chunk: int) -> torch.Tensor:
    """S_i = (1/m) Σ_k ‖Y_i W⁺ Y_iᵀ r_{i,k}‖₁ for every attributed token.

    rows [R] long; probes [R, m, d]; omega [k, R, d]; returns [R] float64.
    """
    return nystrom_plan(operator.shape, rows, probes, omega).run(operator, chunk)


def nystrom_plan(shape: tuple[int, int], rows: torch.Tensor, probes: torch.Tensor, omega: torch.Tensor) -> ProductPlan:
    """The products of :func:`nystrom_block_hutchinson` for an operator on vectors of ``shape`` (n, d)."""

    def read(y, w_pinv):
        coeff = torch.einsum("krd,rmd->rmk", y, probes.double())        # Y_iᵀ r
        approx = torch.einsum("rmk,kl,lrd->rmd", coeff, w_pinv, y)      # Y_i W⁺ Y_iᵀ r
        return approx.abs().sum(-1).mean(-1)

    return sketch_plan(shape, rows, omega, read)


def sketch_plan(shape: tuple[int, int], rows: torch.Tensor, omega: torch.Tensor, read) -> ProductPlan:
    """The k products Y = C Ω restricted to ``rows``; finish() returns read(Y_R [k, R, d], W⁺ [k, k])."""
    n, d = shape
    rank = omega.shape[0]
    y = torch.zeros_like(omega)

    def vectors_of(start, stop):
        v = omega.new_zeros(stop - start, n, d)
        v[:, rows] = omega[start:stop]
        return v

    def consume(start, stop, cv):
        y[start:stop] = cv[:, rows.to(cv.device)].double().cpu()

    def finish():
        w = torch.einsum("krd,lrd->kl", omega, y)
        return read(y, pinv_symmetric(w))

    return ProductPlan(rank, vectors_of, consume, finish)
