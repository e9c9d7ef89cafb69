"""estimator="probing": simultaneous block probing, K sign patterns serve every token at once.

Fix one Rademacher block r_i per token (the reference's probe (i, ρ) for repeat ρ) and draw
sign patterns s^(k) ∈ {±1}^R over the R attributed tokens. Probe with v^(k) = Σ_j s^(k)_j r_j
(r_j placed in token j's block). Then

    (1/K) Σ_k s^(k)_i (C v^(k))_i = C_ii r_i + Σ_{j≠i} [(1/K) Σ_k s^(k)_i s^(k)_j] C_ij r_j

and the bracket has mean 0 and variance 1/K for independent signs, so the estimate is unbiased
for C_ii r_i for every i at once from K products instead of R. Each repeat gives one probe per
token, as the exact estimator with m = 1; S_i averages ‖·‖₁ over ``repeats`` repeats. Cost:
repeats × K curvature-vector products, independent of the number of tokens. The cross-block
residual inflates ‖·‖₁ (docs/method.md §2 states the error).
"""
from __future__ import annotations

import torch

from .hvp import ProductPlan

# The sign patterns come from their own stream so that they never coincide with the probes.
_SIGN_STREAM = 0x5167


def sign_patterns(num_rows: int, repeats: int, patterns: int, seed: int) -> torch.Tensor:
    """The seeded sign patterns: [repeats, patterns, num_rows] of ±1 (float64)."""
    g = torch.Generator().manual_seed(int(seed) * 65537 + _SIGN_STREAM)
    return (torch.randint(0, 2, (repeats, patterns, num_rows), generator=g) * 2 - 1).to(torch.float64)


def simultaneous_probing(operator, rows: torch.Tensor, probes: torch.Tensor, signs: torch.Tensor,
                         chunk: int) -> torch.Tensor:
    """operator: V [B, n, d] -> C V; rows [R] long; probes [R, repeats, d]; signs [repeats, K, R].

    Returns S [R] (float64): mean over repeats of ‖(1/K) Σ_k s^(k)_i (C v^(k))_i‖₁.
    """
    return probing_plan(operator.shape, rows, probes, signs).run(operator, chunk)


def probing_plan(shape: tuple[int, int], rows: torch.Tensor, probes: torch.Tensor, signs: torch.Tensor) -> ProductPlan:
    """The products of :func:`simultaneous_probing` for an operator on vectors of ``shape`` (n, d)."""
    n, d = shape
    repeats, patterns, num_rows = signs.shape
    estimates = torch.zeros(repeats, num_rows, d, dtype=torch.float64)
    rep_of = torch.arange(repeats).repeat_interleave(patterns)   # flat vector q -> (repeat, pattern)
    pat_of = torch.arange(patterns).repeat(repeats)

    def vectors_of(start, stop):
        rep, pat = rep_of[start:stop], pat_of[start:stop]
        v = probes.new_zeros(stop - start, n, d)
        # v[q, rows[j]] = s[rep_q, pat_q, j] * probes[j, rep_q]
        v[:, rows] = signs[rep, pat][:, :, None].to(probes) * probes.permute(1, 0, 2)[rep]
        return v

    def consume(start, stop, cv):
        rep, pat = rep_of[start:stop], pat_of[start:stop]
        blocks = cv[:, rows.to(cv.device)].double().cpu()         # [B, R, d]
        weighted = signs[rep, pat][:, :, None] * blocks          # s_i (C v)_i
        estimates.index_add_(0, rep, weighted)

    def finish():
        return (estimates / patterns).abs().sum(-1).mean(0)

    return ProductPlan(repeats * patterns, vectors_of, consume, finish)
