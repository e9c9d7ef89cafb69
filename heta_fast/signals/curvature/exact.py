"""estimator="exact": the paper's block-restricted Hutchinson estimator, all probes batched.

S_i = (1/m) Σ_k ‖Π_i C Π_i r_{i,k}‖₁ with the probes of probes.rademacher_probes:
one probe vector per (token, k), zero outside token i's block, n·m curvature-vector products
in batches of ``chunk``. Same numbers as reference.curvature_reference up to rounding.

Suffix groups: the block C_ii only depends on the rows from i on (causality), so the tokens are
split into groups of consecutive rows and each group's products run on the input from the
group's first row, with the rows before it frozen as a key/value prefix (target.py). A group
starting at a costs (n − a)/n of a full pass, about half on average; the group size
sqrt(3 n / m) balances that against one extra forward and backward (the primal) per group.
"""
from __future__ import annotations

import math

import torch

from .hvp import apply_chunked


def exact_block_hutchinson(operator, rows: torch.Tensor, probes: torch.Tensor, chunk: int) -> torch.Tensor:
    """Block-restricted Hutchinson with every (token, probe) pair batched.

    operator: V [B, n, d] -> C V [B, n, d]  (operator.shape = (n, d))
    rows:     [R] long, the positions (rows of h) whose S is wanted
    probes:   [R, m, d] probe k of rows[j] is probes[j, k]
    returns:  [R] float64
    """
    n, d = operator.shape
    num_rows, m = probes.shape[:2]
    token_of = rows.repeat_interleave(m)          # pair p = (j, k) -> token position rows[j]
    row_of = torch.arange(num_rows).repeat_interleave(m)
    flat = probes.reshape(num_rows * m, d)
    totals = torch.zeros(num_rows, dtype=torch.float64)

    def vectors_of(start, stop):
        v = flat.new_zeros(stop - start, n, d)
        v[torch.arange(stop - start), token_of[start:stop]] = flat[start:stop]
        return v

    def consume(start, stop, hv):
        block = hv[torch.arange(stop - start, device=hv.device), token_of[start:stop].to(hv.device)]
        totals.index_add_(0, row_of[start:stop], block.abs().sum(-1).double().cpu())

    apply_chunked(operator, vectors_of, num_rows * m, chunk, consume)
    return totals / m


def suffix_group_size(n: int, m: int) -> int:
    """Tokens per suffix group: ≈ sqrt(3 n / m) (a group's primal costs about 3 products)."""
    return max(1, round(math.sqrt(3 * n / m)))


def exact_by_suffix(factory, rows: torch.Tensor, probes: torch.Tensor, group: int) -> torch.Tensor:
    """The exact estimator over suffix operators.

    factory(start) -> (operator over rows [start, n), chunk); rows [R] long, ascending;
    probes [R, m, d]; group: tokens per suffix group. Returns [R] float64.
    """
    out = torch.empty(len(rows), dtype=torch.float64)
    for first in range(0, len(rows), group):
        sel = slice(first, first + group)
        start = int(rows[sel].min())
        operator, chunk = factory(start)
        out[sel] = exact_block_hutchinson(operator, rows[sel] - start, probes[sel], chunk)
        del operator
    return out
