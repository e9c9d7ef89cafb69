"""Benchmark: fused vocabulary KL on CPU, reference vs blocked, side by side.

    python -m pytest benchmarks/bench_vocab_kl.py -q

Shape: B=64 rows, V=49152 vocabulary, d=576 hidden (a SmolLM-sized head).
Peak memory of torch ops is invisible to ``tracemalloc``, so each result carries
the theoretical size of its widest logits buffer in ``benchmark.extra_info``:
``[B, V]`` for the reference (which keeps several such buffers alive:
logits, log_softmax, gathered log p, p, terms) versus ``[B, chunk]`` for the
blocked path.  No timing assertions.
"""

from __future__ import annotations

import pytest
import torch

from heta_fast.ops.vocab_kl.blocked import vocab_kl_blocked
from heta_fast.ops.vocab_kl.naive import vocab_kl_reference

BATCH, VOCAB, DIM, TARGETS = 64, 49152, 576, 8
CHUNK = 8192
FP32_BYTES = 4


@pytest.fixture(scope="module")
def inputs() -> dict:
    """hidden [B, d], weight [V, d], ref_logp [T, V], target_index [B], bias None."""
    gen = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(BATCH, DIM, generator=gen),
        "weight": torch.randn(VOCAB, DIM, generator=gen) / DIM**0.5,
        "ref_logp": torch.log_softmax(3.0 * torch.randn(TARGETS, VOCAB, generator=gen), -1),
        "target_index": torch.arange(BATCH) % TARGETS,
        "bias": None,
    }


IMPLEMENTATIONS = {
    # name: (callable, width of its widest [B, width] fp32 logits buffer)
    "reference": (vocab_kl_reference, VOCAB),
    "blocked": (lambda **kw: vocab_kl_blocked(**kw, chunk_size=CHUNK), CHUNK),
}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_bench_vocab_kl_cpu(benchmark, inputs, impl):
    fn, width = IMPLEMENTATIONS[impl]
    benchmark.group = f"vocab_kl cpu B={BATCH} V={VOCAB} d={DIM}"
    benchmark.extra_info["logits_buffer_shape"] = [BATCH, width]
    benchmark.extra_info["logits_buffer_bytes"] = BATCH * width * FP32_BYTES
    benchmark.extra_info["full_logits_bytes_avoided"] = (
        0 if width == VOCAB else BATCH * VOCAB * FP32_BYTES
    )
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()

    result = benchmark.pedantic(fn, kwargs=inputs, rounds=10, warmup_rounds=1, iterations=1)

    # Correctness sanity only (not timing): both paths agree.
    assert result.shape == (BATCH,) and torch.isfinite(result).all()
    if impl != "reference":
        torch.testing.assert_close(result, vocab_kl_reference(**inputs), rtol=1e-4, atol=1e-4)
