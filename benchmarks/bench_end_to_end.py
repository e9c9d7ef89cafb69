"""One whole attribution on the default model (CPU), with the per-phase split in extra_info.

python -m pytest benchmarks/bench_end_to_end.py -q --benchmark-columns=median,min,rounds
"""
import pytest

from benchmarks.conftest import prompt_ids
from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET


@pytest.mark.parametrize("components", [("flow", "curvature", "information"), ("flow", "information")],
                         ids=["heta", "heta-without-curvature"])
def test_demo_attribution(benchmark, default_attributor, components):
    attr = default_attributor
    attr.config = attr.config.replace(components=components)
    res = benchmark.pedantic(attr.attribute, args=(DEMO_PROMPT, DEMO_TARGET), rounds=2, iterations=1)
    benchmark.extra_info.update({f"phase_{k}_s": v for k, v in res.timings.items()})
    benchmark.extra_info["n_context"] = len(res.context_tokens)


@pytest.mark.parametrize("n", [64, 128])
def test_attribution_by_length_without_curvature(benchmark, default_attributor, n):
    attr = default_attributor
    attr.config = attr.config.replace(components=("flow", "information"))
    ids = prompt_ids(attr.tokenizer, n)
    res = benchmark.pedantic(attr.attribute, args=(ids, [ids[0]]), rounds=2, iterations=1)
    benchmark.extra_info.update({f"phase_{k}_s": v for k, v in res.timings.items()})
