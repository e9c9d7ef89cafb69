"""Benchmark: the flow stage of the engine on the default model (CPU), side by side.

    python -m pytest benchmarks/bench_flow_stage.py -q -s
    HETA_BENCH_THREADS=1 HETA_BENCH_SIZES=256,1024 python -m pytest benchmarks/bench_flow_stage.py -q -s

SmolLM2-135M (30 layers, H=9, Hkv=3, dh=64), float32, two targets at the end of a random
sequence of n tokens, n in {256, 1024, 2048, 4096}. One pytest-benchmark group per n times:

* ``forward``         one plain forward pass (``adapter.log_probs``, heta_eager attention),
                      the pass every curvature/information batch is made of;
* ``capture_stream``  the engine's single forward pass (fused attention, records q, k, lse, vn);
* ``flow_stream``     the streaming flow gate on that capture (what the flow stage adds);
* ``flow_reference``  the reference flow stage: forward with materialised attention
                      (``adapter.capture``) + ``flow_gate_reference``. Not run at n = 4096,
                      where its attention matrices alone take 18 GB.

Peak memory is measured once per stage, outside the timed rounds, as the peak resident set
size above the level before the stage (Linux: VmHWM after resetting it through
/proc/self/clear_refs; glibc's mmap threshold is pinned so that freed tensors leave the
resident set). ``stream total`` is capture_stream + flow_stream with the capture held, i.e.
everything the streaming path needs for M_T; ``reference`` is the same for the oracle.
At teardown the module prints a markdown table (also written to
``.benchmarks/flow_stage.md``). No timing assertions: this machine's cores are shared.
"""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import pytest
import torch

from heta_fast.reference import flow_gate_reference, value_norms_reference
from heta_fast.signals.flow import flow_gate

# HETA_BENCH_SIZES=64,128 runs a quick subset.
SIZES = tuple(int(v) for v in os.environ.get("HETA_BENCH_SIZES", "256,1024,2048,4096").split(","))
REFERENCE_MAX_N = 2048  # the reference's L*H*n^2 fp32 attention: 4.5 GB at 2048, 18 GB at 4096
STAGES = ("forward", "capture_stream", "flow_stream", "flow_reference")
TABLE_PATH = Path(".benchmarks/flow_stage.md")

_RESULTS: dict[int, dict[str, dict]] = {}

# HETA_BENCH_THREADS=1 pins torch's intra-op threads (use it when other jobs share the cores:
# oversubscribed OpenMP threads distort the timings far more than a smaller thread count).
if os.environ.get("HETA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["HETA_BENCH_THREADS"]))


# ----------------------------------------------------------------------------- peak memory
def _pin_malloc() -> bool:
    """Make glibc return freed large blocks to the OS, so RSS tracks live tensors."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 17))  # M_MMAP_THRESHOLD = 128 KiB, no dynamic growth
    except OSError:
        return False


_MEMORY_OK = _pin_malloc() and os.access("/proc/self/clear_refs", os.W_OK)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_bytes(fn) -> tuple[object, int | None]:
    """(fn(), peak RSS above the level before the call) or (fn(), None) off Linux."""
    if not _MEMORY_OK:
        return fn(), None
    gc.collect()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    out = fn()
    return out, _status("VmHWM") - base


def tensor_bytes(capture) -> int:
    """Exact bytes the streaming capture keeps per request (q, k, lse, value norms of every layer)."""
    return sum(t.numel() * t.element_size() for rec in capture.layers for t in (rec.q, rec.k, rec.lse, rec.values))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def adapter():
    from heta_fast import Attributor, HETAConfig

    adapter = Attributor.from_pretrained("smollm2-135m", config=HETAConfig(num_probes=2)).adapter
    # One-time costs (lazy initialisation, first allocations) belong to no stage.
    x, positions = _inputs(adapter, 32)
    with torch.no_grad():
        adapter.log_probs(x[None], positions)
    _stream_stage(adapter, x, positions, 30)
    _reference_stage(adapter, x, positions, 30)
    return adapter


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    text = summary_table(_RESULTS)
    TABLE_PATH.parent.mkdir(exist_ok=True)
    TABLE_PATH.write_text(text)
    print("\n" + text)


def _inputs(adapter, n: int):
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(100, adapter.model.config.vocab_size, (n,), generator=gen)
    return adapter.embed(ids), torch.tensor([n - 2, n - 1])


def _reference_stage(adapter, x, positions, n_context):
    cap = adapter.capture(x)
    norms = [value_norms_reference(v, w) for v, w in zip(cap.values, cap.out_proj)]
    return flow_gate_reference(cap.attentions, norms, positions, n_context)


def _stream_stage(adapter, x, positions, n_context):
    return flow_gate(adapter.capture_stream(x, positions), positions, n_context)


# ----------------------------------------------------------------------------- the benchmark
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("n", SIZES)
def test_bench_flow_stage(benchmark, adapter, n, stage):
    if stage == "flow_reference" and n > REFERENCE_MAX_N:
        pytest.skip(f"reference attention alone would take {30 * 9 * n * n * 4 / 1e9:.0f} GB")
    x, positions = _inputs(adapter, n)
    n_ctx = n - 1
    benchmark.group = f"flow stage, smollm2-135m fp32, n={n}, T=2"
    row = _RESULTS.setdefault(n, {})
    rounds = 3 if n <= 1024 else 2

    if stage == "forward":
        def run():
            with torch.no_grad():
                return adapter.log_probs(x[None], positions)
        _, row["forward_peak"] = peak_bytes(run)
    elif stage == "capture_stream":
        def run():
            return adapter.capture_stream(x, positions)
        cap, row["capture_peak"] = peak_bytes(run)
        row["capture_bytes"] = tensor_bytes(cap)
        del cap
        # Everything the streaming path needs for M_T: capture + rollout, capture held.
        _, row["stream_total_peak"] = peak_bytes(lambda: _stream_stage(adapter, x, positions, n_ctx))
    elif stage == "flow_stream":
        cap = adapter.capture_stream(x, positions)

        def run():
            return flow_gate(cap, positions, n_ctx)
        m, row["flow_stream_peak"] = peak_bytes(run)
        if n <= REFERENCE_MAX_N:
            row["stream_result"] = m
    else:
        def run():
            return _reference_stage(adapter, x, positions, n_ctx)
        ref, row["reference_peak"] = peak_bytes(run)
        if "stream_result" in row:  # sanity only: both paths give the same gate
            torch.testing.assert_close(row["stream_result"], ref, rtol=1e-4, atol=1e-6)

    benchmark.extra_info.update({k: v for k, v in row.items() if k.endswith(("_peak", "_bytes"))})
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    row[f"{stage}_time"] = benchmark.stats.stats.median


# ----------------------------------------------------------------------------- summary
def _mb(v) -> str:
    return "–" if v is None else f"{v / 2**20:,.0f}"


def _s(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def summary_table(results: dict[int, dict]) -> str:
    """Markdown table: median seconds and peak MiB per stage, with the two target ratios."""
    head = ("| n | forward s | capture_stream s | flow_stream s | flow_stream / forward "
            "| flow_stream / capture_stream | reference s "
            "| forward MiB | stream total MiB (capture kept) | reference MiB | stream / reference memory |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for n in sorted(results):
        r = results[n]
        t_fwd, t_flow, t_ref = r.get("forward_time"), r.get("flow_stream_time"), r.get("flow_reference_time")
        m_stream, m_ref = r.get("stream_total_peak"), r.get("reference_peak")
        t_cap = r.get("capture_stream_time")
        ratio_t = f"{t_flow / t_fwd:.2f}" if t_fwd and t_flow else "–"
        ratio_c = f"{t_flow / t_cap:.2f}" if t_cap and t_flow else "–"
        ratio_m = f"{100 * m_stream / m_ref:.1f} %" if m_stream and m_ref else "–"
        lines.append(f"| {n} | {_s(t_fwd)} | {_s(t_cap)} | {_s(t_flow)} | {ratio_t} | {ratio_c} "
                     f"| {_s(t_ref)} | {_mb(r.get('forward_peak'))} | {_mb(m_stream)} "
                     f"(capture {_mb(r.get('capture_bytes'))}) | {_mb(m_ref)} | {ratio_m} |")
    return head + "\n".join(lines) + "\n"


def results_from_json(path: str) -> dict[int, dict]:
    """Rebuild the summary's input from ``--benchmark-json`` output."""
    import json

    results: dict[int, dict] = {}
    for bench in json.loads(Path(path).read_text())["benchmarks"]:
        n, stage = bench["params"]["n"], bench["params"]["stage"]
        row = results.setdefault(n, {})
        row.update(bench["extra_info"])
        row[f"{stage}_time"] = bench["stats"]["median"]
    return results


if __name__ == "__main__":  # python benchmarks/bench_flow_stage.py results.json -> the table
    import sys

    print(summary_table(results_from_json(sys.argv[1])))
