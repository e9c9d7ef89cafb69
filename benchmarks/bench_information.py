"""Benchmark: the information term on the default model (CPU), three implementations side by side.

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_information.py \
        -q --benchmark-columns=min,rounds --benchmark-json=bench_information.json
    python -m benchmarks.bench_information info.jsonl   # the BENCHMARKS.md table of a BENCH_INFO_LOG file

For n = 64, 128, 256, 512 context tokens and one target predicted at the last one:

* ``a0-naive-loop``: the loop as a plain transformers user writes it (and as the issue states
  the starting point): one full pass of n tokens per masked token with the logits over the
  whole vocabulary at *every* position, the target's row then taken from them;
* ``a-reference``: the reference's sequential loop (``information_reference``): one full pass
  of n tokens per masked token, plus its own unmasked pass;
* ``b-batched``: batched full passes, no prefix sharing: ``BATCH_B`` masked copies of the whole
  input per pass, same fused attention and fused vocabulary KL as the engine;
* ``c-engine``: ``heta_fast.signals.information.information`` as the engine calls it: prefix
  sharing over the KV cache of the engine's forward pass, packed budgeted batches, fused KL,
  with ``memory_budget = ENGINE_BUDGET``.

From n = ``SAMPLE_FROM`` on, (a0), (a) and (b) run on a counted subset of their passes: only the
first ``SAMPLED_TOKENS`` tokens are masked (each of their passes is still a full pass over all n
positions, so every pass costs the same) and their time is scaled by the number of passes (the
``scale`` in ``extra_info``); the engine always runs in full.

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

from benchmarks.conftest import information_case
from heta_fast import HETAConfig
from heta_fast.divergence import kl_divergence
from heta_fast.model.attention import attention_implementation
from heta_fast.ops.vocab_kl import vocab_kl
from heta_fast.reference import information_reference
from heta_fast.signals.information import information

# BENCH_INFO_SIZES="64,128" runs a subset; BENCH_INFO_LOG=path appends one JSON line per result
# (kept even if the run is cut short).
SIZES = tuple(int(v) for v in os.environ.get("BENCH_INFO_SIZES", "64,128,256,512").split(","))
IMPLEMENTATIONS = ("a0-naive-loop", "a-reference", "b-batched", "c-engine")
SAMPLE_FROM = int(os.environ.get("BENCH_INFO_SAMPLE_FROM", "256"))
SAMPLED_TOKENS = int(os.environ.get("BENCH_INFO_SAMPLED_TOKENS", "32"))
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
def naive_loop(adapter, embeds, positions, n_context, masks, orig):
    """(a0): one full pass per masked token, logits [n, V] at every position. [T, n_context]."""
    cols = []
    for i in range(n_context):
        masked = embeds.clone()
        masked[i] = masks[i]
        logits = adapter.logits(masked[None])[0]  # [n, V]: the whole vocabulary at every position
        cols.append(kl_divergence(orig, torch.log_softmax(logits[positions], dim=-1)))
    return torch.stack(cols, dim=1)


@torch.no_grad()
def batched_full_passes(adapter, embeds, positions, n_context, masks, orig, rows=BATCH_B):
    """(b): masked copies of the whole input, ``rows`` per pass; fused attention and KL. [T, n_context]."""
    weight, bias = adapter.unembedding()
    x = embeds[: int(positions.max()) + 1]
    out = torch.empty(positions.numel(), n_context)
    with attention_implementation(adapter.model):
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
    # The engine's forward pass: P_orig at the target and, kept for (c), every layer's keys and
    # values (the prefix cache). All three implementations get P_orig from outside the timed
    # region; (a) runs its own unmasked pass inside, as the reference loop does.
    return {n: information_case(default_attributor, n) for n in SIZES}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_bench_information(benchmark, case, n, impl):
    adapter, x, positions, masks, orig, prefix = case[n]
    benchmark.group = f"information n={n}"
    benchmark.extra_info.update(n=n, torch_threads=torch.get_num_threads(),
                                malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    cpu_start = time.process_time()
    # The baselines' passes all cost the same; long inputs time a counted subset of them.
    masked = n if impl == "c-engine" or n < SAMPLE_FROM else min(SAMPLED_TOKENS, n)
    if impl != "c-engine":
        # (a) also runs its own unmasked pass: n + 1 passes in all, masked + 1 of them timed.
        scale = (n + 1) / (masked + 1) if impl == "a-reference" else n / masked
        benchmark.extra_info.update(token_positions=n * n, masked_tokens_timed=masked, scale=round(scale, 4))
    if impl == "a0-naive-loop":
        result = benchmark.pedantic(naive_loop, args=(adapter, x, positions, masked, masks, orig),
                                    rounds=1, iterations=1)
    elif impl == "a-reference":
        result = benchmark.pedantic(information_reference, args=(adapter, x, positions, masked, masks),
                                    rounds=1, iterations=1)
    elif impl == "b-batched":
        result = benchmark.pedantic(batched_full_passes, args=(adapter, x, positions, masked, masks, orig),
                                    rounds=1, iterations=1)
    else:
        stats: dict = {}
        config = HETAConfig(memory_budget=ENGINE_BUDGET)

        def run():
            stats.clear()
            measured = _reset_peak()
            before = _status_bytes("VmRSS")
            out = information(adapter, x, positions, n, masks, orig, config, stats=stats, prefix=prefix)
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
    # Every implementation computes the same numbers (sampled ones: their first columns).
    first = next(v for (size, _), v in _results.items() if size == n)
    cols = min(first.shape[1], result.shape[1])
    torch.testing.assert_close(result[:, :cols].float(), first[:, :cols].float(), rtol=1e-3, atol=1e-4)


def render_table(log_path: str) -> str:
    """The BENCHMARKS.md table from a ``BENCH_INFO_LOG`` file (sampled baselines scaled to all passes)."""
    rows: dict[int, dict[str, dict]] = {}
    for line in open(log_path):
        rec = json.loads(line)
        scale = rec.get("scale", 1.0)
        rec["wall"], rec["cpu"] = rec["wall_seconds"] * scale, rec["cpu_seconds"] * scale
        rows.setdefault(rec["n"], {})[rec["impl"]] = rec
    head = ("| n | (a0) naive loop s wall / CPU | (a) reference s wall / CPU | (b) batched s wall / CPU "
            "| (c) engine s wall / CPU | positions (a0, a, b) / (c) | a0/c wall (CPU) | a/c wall (CPU) "
            "| b/c wall (CPU) | (c) peak MiB measured / model |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in sorted(rows):
        r = rows[n]
        c = r.get("c-engine")

        def cell(impl):
            rec = r.get(impl)
            if rec is None:
                return "not run"
            mark = "≈" if rec.get("scale", 1.0) != 1.0 else ""
            return f"{mark}{rec['wall']:.1f} / {mark}{rec['cpu']:.1f}"

        def ratio(impl):
            rec = r.get(impl)
            if rec is None or c is None:
                return ""
            return f"{rec['wall'] / c['wall']:.2f} ({rec['cpu'] / c['cpu']:.2f})"

        peak = ""
        if c is not None and c.get("measured_peak_bytes") is not None:
            peak = f"{c['measured_peak_bytes'] / 2**20:.1f} / {c['estimated_peak_bytes'] / 2**20:.1f}"
        positions = f"{n * n} / {c['token_positions']}" if c is not None else f"{n * n} / –"
        out.append(f"| {n} | {cell('a0-naive-loop')} | {cell('a-reference')} | {cell('b-batched')} | "
                   f"{cell('c-engine')} | {positions} | {ratio('a0-naive-loop')} | {ratio('a-reference')} | "
                   f"{ratio('b-batched')} | {peak} |")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(render_table(sys.argv[1]))
