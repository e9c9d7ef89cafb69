"""Curvature term on the default model (CPU): reference loop vs exact batched vs the default estimator.

    python -m pytest benchmarks/bench_curvature.py -q -s --benchmark-columns=median,rounds

n context tokens (natural text) in {32, 128, 512}, one target predicted at position n - 1,
float32, default memory budget. Side by side, per n:

* ``reference``: reference.curvature_reference's loop (one HVP per (token, probe), m = 10, each
  a fresh forward + backward + double backward). Timed on a counted subset, its first
  REFERENCE_TIMED (token, probe) pairs, and scaled by n·m / REFERENCE_TIMED.
* ``exact``: the engine's estimator="exact" (m = 10): batched, suffix groups. Timed on its
  middle suffix group (a group's cost is linear in its suffix length, so the middle group costs
  the average group), scaled by the number of groups.
* ``default``: the engine's default estimator (HETAConfig()), timed in full.

The last test prints the table (scaled times, HVP counts, speed-ups over the reference) that
BENCHMARKS.md records. No timing assertions: ratios from one run on a shared machine.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import prompt_ids
from heta_fast import HETAConfig
from heta_fast.reference import hvp_reference, rademacher_probes
from heta_fast.signals.curvature import curvature
from heta_fast.signals.curvature.estimators import products_needed
from heta_fast.signals.curvature.exact import exact_by_suffix, suffix_group_size
from heta_fast.signals.curvature.operators import OperatorFactory

SIZES = (32, 128, 512)
M = 10
REFERENCE_TIMED = 3
RESULTS: dict[tuple[int, str], dict] = {}


@pytest.fixture(scope="module")
def inputs(default_attributor):
    """n -> (embeds [n, d], target token id)."""
    attr = default_attributor
    target = attr.tokenizer(" leaves", add_special_tokens=False)["input_ids"][0]
    return {n: (attr.adapter.embed(torch.tensor(prompt_ids(attr.tokenizer, n))), target) for n in SIZES}


def _reference_subset(adapter, x, token, n):
    """The reference loop's first REFERENCE_TIMED iterations (probe k of token i, in its order)."""
    probes = rademacher_probes(n, M, x.shape[1], seed=0)
    total = torch.zeros(())
    for pair in range(REFERENCE_TIMED):
        i, k = divmod(pair, M)
        v = torch.zeros_like(x)
        v[i] = probes[i, k].to(x.dtype)
        total = total + hvp_reference(adapter, x, n - 1, token, v)[i].abs().sum()
    return total


def _exact_subset(adapter, x, token, n, config):
    """The exact estimator's middle suffix group; returns (scale to all groups, HVPs timed)."""
    group = suffix_group_size(n, M)
    starts = list(range(0, n, group))
    start = starts[len(starts) // 2]
    probes = rademacher_probes(n, M, x.shape[1], config.seed)
    factory = OperatorFactory(adapter, x, n - 1, token, config)
    rows = torch.arange(start, min(start + group, n))
    exact_by_suffix(factory, rows, probes[rows], group)
    return len(starts), len(rows) * M


@pytest.mark.parametrize("method", ["reference", "exact", "default"])
@pytest.mark.parametrize("n", SIZES)
def test_bench_curvature(benchmark, default_attributor, inputs, n, method):
    adapter = default_attributor.adapter
    x, token = inputs[n]
    benchmark.group = f"curvature n={n}"
    default = HETAConfig()
    exact = HETAConfig(estimator="exact", num_probes=M)
    info = {"hvps": {"reference": n * M, "exact": n * M, "default": products_needed(default, n)}[method]}

    if method == "reference":
        benchmark.pedantic(_reference_subset, args=(adapter, x, token, n), rounds=1, iterations=1)
        info.update(timed_hvps=REFERENCE_TIMED, scale=n * M / REFERENCE_TIMED)
    elif method == "exact":
        scale_box = {}

        def run():
            scale_box["scale"], scale_box["timed"] = _exact_subset(adapter, x, token, n, exact)

        benchmark.pedantic(run, rounds=1, iterations=1)
        info.update(timed_hvps=scale_box["timed"], scale=scale_box["scale"])
    else:
        out = benchmark.pedantic(curvature, args=(adapter, x, torch.tensor([n - 1]), torch.tensor([token]), n,
                                                  default), rounds=1, iterations=1)
        assert out.shape == (1, n) and torch.isfinite(out).all()
        info.update(timed_hvps=info["hvps"], scale=1.0, estimator=default.estimator,
                    repeats=default.probing_repeats, patterns=default.probing_patterns)
    info["seconds_timed"] = benchmark.stats.stats.median
    info["seconds_estimated"] = info["seconds_timed"] * info["scale"]
    benchmark.extra_info.update(info)
    RESULTS[(n, method)] = info


def test_zz_table():
    """Print the side-by-side table (run with -s)."""
    if not RESULTS:
        pytest.skip("no benchmark ran")
    lines = ["| n | method | HVPs | timed HVPs | time (s, scaled to all HVPs) | speed-up vs reference |"
             " default time / one reference HVP |", "|---|---|---|---|---|---|---|"]
    for n in SIZES:
        ref = RESULTS.get((n, "reference"))
        one_hvp = ref["seconds_timed"] / ref["timed_hvps"] if ref else None
        for method in ("reference", "exact", "default"):
            r = RESULTS.get((n, method))
            if r is None:
                continue
            speed = f"{ref['seconds_estimated'] / r['seconds_estimated']:.1f}×" if ref else "n/a"
            per_hvp = f"{r['seconds_estimated'] / one_hvp:.1f}" if (one_hvp and method == "default") else ""
            lines.append(f"| {n} | {method} | {r['hvps']} | {r['timed_hvps']} | {r['seconds_estimated']:.1f} | "
                         f"{speed} | {per_hvp} |")
    print("\n" + "\n".join(lines))
