"""First-order passes through heta's eager math attention against the fused kernel (issue 16 §1).

    python -m pytest benchmarks/bench_attention_order.py -q -s -p no:cacheprovider --benchmark-columns=min,rounds

The default model, one torch thread, n = 256 tokens of the filler text, one target at the last:
the information term's second-order estimate (one forward with gradients, 8 backward passes)
and the gradient baseline (one backward), each under ``heta_eager`` (the math path the
curvature's double backward needs) and under the attention ``"auto"`` picks for no-grad passes
(SDPA here), alternating, three rounds each. extra_info has the CPU seconds. No timing assertions.
"""
from __future__ import annotations

import time

import pytest
import torch

from benchmarks.conftest import prompt_ids
from heta_fast.evaluate.baselines.gradients import target_gradients
from heta_fast.model.attention import attention_implementation
from heta_fast.signals.information import fisher_information

N = 256


@pytest.fixture(scope="module")
def case(default_attributor):
    adapter = default_attributor.adapter
    ids = prompt_ids(default_attributor.tokenizer, N)
    return adapter, adapter.embed(torch.tensor(ids)), torch.tensor([N - 1]), torch.tensor([ids[0]])


@pytest.mark.parametrize("attention", ["heta_eager", "auto"])
@pytest.mark.parametrize("work", ["fisher-8", "gradient"])
def test_bench_attention_order(benchmark, case, work, attention):
    adapter, x, positions, target = case
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    benchmark.group = work

    def run():
        # The Attributor leaves the model on heta_eager; "auto" switches inside each function.
        if attention == "heta_eager":
            with attention_implementation(adapter.model, None), _no_switch():
                return _work(work, adapter, x, positions, target)
        return _work(work, adapter, x, positions, target)

    start = time.process_time()
    try:
        benchmark.pedantic(run, rounds=3, iterations=1)
    finally:
        torch.set_num_threads(saved)
    benchmark.extra_info.update(cpu_seconds_per_round=(time.process_time() - start) / 3)
    print(f"\n{work} {attention}: {benchmark.extra_info}", flush=True)


def _work(work, adapter, x, positions, target):
    if work == "fisher-8":
        return fisher_information(adapter, x, positions, N, torch.zeros(N, x.shape[-1]), 8)
    return target_gradients(adapter, x, positions, target)


class _no_switch:
    """Make ``attention_implementation(model, "auto")`` keep the model's own attention inside."""

    def __enter__(self):
        from heta_fast.model.attention import switch

        self._saved = switch.choose_no_grad_attention
        switch.choose_no_grad_attention = lambda model: None
        return self

    def __exit__(self, *exc):
        from heta_fast.model.attention import switch

        switch.choose_no_grad_attention = self._saved
