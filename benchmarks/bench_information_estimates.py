"""Benchmark: the exact information term against its cheap estimates, side by side (issue 16 §2).

    python -m pytest benchmarks/bench_information_estimates.py -q -s -p no:cacheprovider \
        --benchmark-columns=min,rounds

For n = 128, 256, 512 context tokens of natural text and one target predicted at the last one,
one torch thread, one round each, in this order per n:

* ``exact``: ``information`` as the engine calls it (prefix cache of the engine's forward pass
  given, packed budgeted passes, fused KL), the default;
* ``fisher-K``: ``fisher_information`` with K = 8 eigenpairs (the default rank) and 32: its own
  forward pass with gradients and K backward passes;
* ``span-S``: ``information`` under ``information_estimator="span"`` with S = 8 (the default) and
  16: the packed passes recomputing S positions after each masked token and before the target.

extra_info has the CPU seconds of each and, for an estimate, the Spearman against the exact term
of this run. BENCH_ESTIMATE_SIZES="128,256" runs a subset. No timing assertions.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from benchmarks.conftest import information_case
from heta_fast import HETAConfig
from heta_fast.signals.information import fisher_information, information

SIZES = tuple(int(v) for v in os.environ.get("BENCH_ESTIMATE_SIZES", "128,256,512").split(","))
VARIANTS = ("exact", "fisher-8", "fisher-32", "span-8", "span-16")
_exact: dict[int, torch.Tensor] = {}


@pytest.fixture(scope="module")
def cases(default_attributor):
    return {n: information_case(default_attributor, n) for n in SIZES}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", SIZES)
def test_bench_information_estimates(benchmark, cases, n, variant):
    from scipy.stats import spearmanr

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    adapter, x, positions, masks, orig, prefix = cases[n]
    benchmark.group = f"information n={n}"
    start = time.process_time()
    try:
        if variant == "exact":
            result = benchmark.pedantic(information, args=(adapter, x, positions, n, masks, orig, HETAConfig()),
                                        kwargs=dict(prefix=prefix), rounds=1, iterations=1)
            _exact[n] = result
        else:
            kind, k = variant.split("-")
            if kind == "fisher":
                result = benchmark.pedantic(fisher_information, args=(adapter, x, positions, n, masks, int(k)),
                                            rounds=1, iterations=1)
            else:
                config = HETAConfig(information_estimator="span", information_span=int(k))
                result = benchmark.pedantic(information, args=(adapter, x, positions, n, masks, orig, config),
                                            kwargs=dict(prefix=prefix), rounds=1, iterations=1)
            if n in _exact:
                benchmark.extra_info["spearman_vs_exact"] = float(spearmanr(_exact[n][0], result[0])[0])
    finally:
        torch.set_num_threads(saved)
    benchmark.extra_info.update(n=n, cpu_seconds=time.process_time() - start, load_after=os.getloadavg()[0])
    print(f"\n{variant} n={n}: {benchmark.extra_info}", flush=True)
    assert torch.isfinite(result).all() and result.shape == (1, n)
