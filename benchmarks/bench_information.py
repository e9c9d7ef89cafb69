"""Benchmark: the information term on the default model (CPU), three implementations side by side.

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_information.py \
        -q --benchmark-columns=min,rounds --benchmark-json=bench_information.json

For n = 64, 128, 256, 512 context tokens and one target predicted at the last one:

* ``a-reference``: the reference's sequential loop (``information_reference``): one full pass
  of n tokens per masked token, plus its own unmasked pass;
* ``b-batched``: batched full passes, no prefix sharing: ``BATCH_B`` masked copies of the whole
  input per pass, same fused attention and fused vocabulary KL as the engine;
* ``c-engine``: ``heta_fast.signals.information.information`` as the engine calls it: prefix
  sharing over the KV cache of the engine's forward pass, packed budgeted batches, fused KL,
  with ``memory_budget = ENGINE_BUDGET``.

Token-positions count the masked passes only: the unmasked pass that gives P_orig (and, for the
engine, the prefix cache) is the engine's one forward pass, shared by all three signals.

``extra_info`` records the token-positions each one sends through the model and, for the
engine, its peak memory: the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus the resident set before the call. glibc keeps freed blocks below
its dynamic mmap threshold mapped, so run with ``MALLOC_MMAP_THRESHOLD_=65536`` for the peak to
measure live memory rather than allocator retention. One round each (the reference loop at
n = 512 alone takes minutes on 2 cores). No timing assertions; the sanity check compares
numbers only.
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest
import torch
from transformers import DynamicCache

from benchmarks.conftest import prompt_ids
from heta_fast.fast_attention import no_grad_attention
from heta_fast.ops.vocab_kl import vocab_kl
from heta_fast.reference import information_reference
from heta_fast.signals.information import information
from heta_fast.signals.prefix_cache import PrefixCache

# BENCH_INFO_SIZES="64,128" runs a subset; BENCH_INFO_LOG=path appends one JSON line per result
# (kept even if the run is cut short).
SIZES = tuple(int(v) for v in os.environ.get("BENCH_INFO_SIZES", "64,128,256,512").split(","))
IMPLEMENTATIONS = ("a-reference", "b-batched", "c-engine")
BATCH_B = 8
ENGINE_BUDGET = 256 * 1024**2
_results: dict[tuple[int, str], torch.Tensor] = {}


def _status_bytes(key: str) -> int | None:
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return None
    m = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(m.group(1)) * 1024 if m else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def batched_full_passes(adapter, embeds, positions, n_context, masks, orig, rows=BATCH_B):
    """(b): masked copies of the whole input, ``rows`` per pass; fused attention and KL. [T, n_context]."""
    weight, bias = adapter.unembedding()
    x = embeds[: int(positions.max()) + 1]
    out = torch.empty(positions.numel(), n_context)
    with no_grad_attention(adapter.model):
        for start in range(0, n_context, rows):
            idx = torch.arange(start, min(start + rows, n_context))
            batch = x.expand(len(idx), -1, -1).clone()
            batch[torch.arange(len(idx)), idx] = masks[idx]
            hidden = adapter.hidden_states(batch, DynamicCache())[:, positions]  # [B, T, d]
            target_index = torch.arange(positions.numel()).repeat(len(idx))
            kl = vocab_kl(hidden.reshape(-1, hidden.shape[-1]), weight, orig, target_index, bias)
            out[:, idx] = kl.view(len(idx), -1).t()
    return out


@pytest.fixture(scope="module")
def case(default_attributor):
    attr = default_attributor
    adapter = attr.adapter
    cases = {}
    for n in SIZES:
        x = adapter.embed(torch.tensor(prompt_ids(attr.tokenizer, n)))
        positions = torch.tensor([n - 1])
        # The engine's forward pass: P_orig at the target and, kept for (c), every layer's keys
        # and values (the prefix cache). All three implementations get P_orig from outside the
        # timed region; (a) runs its own unmasked pass inside, as the reference loop does.
        capture = adapter.capture_stream(x, positions, record=False, keep_kv=True)
        prefix = PrefixCache.from_kv(capture.kv, n - 1)
        cases[n] = (adapter, x, positions, torch.zeros(n, x.shape[-1]), capture.log_probs, prefix)
    return cases


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_bench_information(benchmark, case, n, impl):
    adapter, x, positions, masks, orig, prefix = case[n]
    benchmark.group = f"information n={n}"
    benchmark.extra_info.update(n=n, torch_threads=torch.get_num_threads(),
                                malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    cpu_start = time.process_time()
    if impl == "a-reference":
        result = benchmark.pedantic(information_reference, args=(adapter, x, positions, n, masks),
                                    rounds=1, iterations=1)
        benchmark.extra_info["token_positions"] = n * n  # n masked passes (+ n for its own unmasked pass)
    elif impl == "b-batched":
        result = benchmark.pedantic(batched_full_passes, args=(adapter, x, positions, n, masks, orig),
                                    rounds=1, iterations=1)
        benchmark.extra_info["token_positions"] = n * n
    else:
        stats: dict = {}
        kwargs = dict(memory_budget=ENGINE_BUDGET, stats=stats, prefix=prefix)

        def run():
            stats.clear()
            measured = _reset_peak()
            before = _status_bytes("VmRSS")
            out = information(adapter, x, positions, n, masks, orig, **kwargs)
            peak = _status_bytes("VmHWM")
            stats["peak_bytes"] = peak - before if measured and peak is not None else None
            return out

        result = benchmark.pedantic(run, rounds=1, iterations=1)
        benchmark.extra_info.update(
            token_positions=stats["positions"], masked_positions=stats["masked_positions"],
            prefix_positions=stats["prefix_positions"], passes=stats["passes"], max_rows=stats["max_rows"],
            bound_n2_over_2_plus_n=n * n // 2 + n, memory_budget=ENGINE_BUDGET,
            estimated_peak_bytes=stats["estimated_peak_bytes"], measured_peak_bytes=stats["peak_bytes"],
            attention=stats["attention"])
    # Process CPU seconds: steadier than wall time when other jobs share the cores.
    benchmark.extra_info["cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    if os.environ.get("BENCH_INFO_LOG"):
        with open(os.environ["BENCH_INFO_LOG"], "a") as f:
            f.write(json.dumps({"impl": impl, "wall_seconds": benchmark.stats.stats.min,
                                **benchmark.extra_info}) + "\n")
    _results[(n, impl)] = result
    assert torch.isfinite(result).all()
    if (n, "a-reference") in _results and impl != "a-reference":
        torch.testing.assert_close(result, _results[(n, "a-reference")].float(), rtol=1e-3, atol=1e-4)
