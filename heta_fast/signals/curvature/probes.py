"""The block-restricted Rademacher probes of the curvature estimators, by one seed rule.

Seed rule (docs/method.md §2): ``torch.Generator().manual_seed(seed)`` draws
``randint(0, 2, (n_context, m, d))`` once, in that order, and maps {0, 1} to {-1, +1}. Probe
(i, k) is zero outside token i's embedding block, so only its block is stored. Every estimator
takes row i for token i, whatever the window, so a token keeps its probes across windows and
estimators. The oracle (heta_fast/reference.py) draws by the same rule with its own code.
"""
from __future__ import annotations

import torch


def rademacher_probes(n_context: int, num_probes: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """[n_context, num_probes, d] of ±1: probe k of token i is row [i, k]."""
    generator = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n_context, num_probes, d), generator=generator)
    return (signs * 2 - 1).to(dtype)
