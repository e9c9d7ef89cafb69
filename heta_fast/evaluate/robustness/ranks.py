"""Rank statistics of the robustness studies: mid-ranks, Spearman, and the change of an attribution."""
from __future__ import annotations

import torch

from ...errors import InputError


def ranks(x: torch.Tensor) -> torch.Tensor:
    """x [n] -> ranks 1..n [n] (float64), tied values share the mean of their ranks."""
    x = x.detach().double().flatten()
    order = torch.argsort(x, stable=True)
    out = torch.empty_like(x)
    sorted_x = x[order]
    start = 0
    n = x.numel()
    while start < n:
        stop = start + 1
        while stop < n and sorted_x[stop] == sorted_x[start]:
            stop += 1
        out[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman correlation of a [n] and b [n] (Pearson of mid-ranks); None when either is constant."""
    if a.numel() != b.numel():
        raise InputError(f"spearman needs equal lengths, got {a.numel()} and {b.numel()}")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return None if denom == 0.0 else float((ra * rb).sum()) / denom


def attribution_change(clean: torch.Tensor, noisy: torch.Tensor) -> dict:
    """clean [n], noisy [n] -> {"rank_change": 1 − Spearman (None if undefined), "mass_change": TV of |s| / Σ|s|}."""
    rho = spearman(clean, noisy)
    p, q = clean.detach().double().abs(), noisy.detach().double().abs()
    if float(p.sum()) == 0.0 or float(q.sum()) == 0.0:
        tv = None
    else:
        tv = 0.5 * float((p / p.sum() - q / q.sum()).abs().sum())
    return {"rank_change": None if rho is None else 1.0 - rho, "mass_change": tv}
