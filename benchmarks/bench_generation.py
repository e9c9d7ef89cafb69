"""Attributing a whole generation against one token of it (issue 16 §3), side by side.

The demo prompt (31 tokens) and the default model's own greedy continuation of it; the engine
as shipped attributes its first T tokens, T = 1, 8 and 64, in one request each:

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_generation.py -q --benchmark-columns=min,rounds

extra_info holds each phase's seconds and the curvature's HVP count. One capture forward and
one set of masked passes serve every target (the information term's passes grow with the input
length, not with T); the curvature pays its probes per target over that target's prefix
(docs/method.md §2 "Many targets" says why). No timing assertions.
"""
import pytest
import torch

from heta_fast.cli import DEMO_PROMPT
from heta_fast.signals.curvature import products_total

TARGET_LENGTHS = (1, 8, 64)


@pytest.fixture(scope="module")
def generation(default_attributor):
    """The model's greedy 64-token continuation of the demo prompt, as ids."""
    attr = default_attributor
    ids = attr.tokenizer(DEMO_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = attr.model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("tokens", TARGET_LENGTHS)
def test_generation(benchmark, default_attributor, generation, tokens):
    attr = default_attributor
    benchmark.group = "generation"
    target = attr.tokenizer.decode(generation[:tokens])
    res = benchmark.pedantic(attr.attribute, args=(DEMO_PROMPT, target), rounds=1, iterations=1)
    t, n_ctx = len(res.target_tokens), len(res.context_tokens)
    benchmark.extra_info.update({f"phase_{k}_s": v for k, v in res.timings.items()})
    benchmark.extra_info.update(targets=t, n_context=n_ctx, hvps=products_total(n_ctx, t, attr.config),
                                torch_threads=torch.get_num_threads())
