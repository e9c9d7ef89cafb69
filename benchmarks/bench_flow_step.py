"""Benchmark: one flow-rollout layer on CPU, reference vs blocked, side by side.

    python -m pytest benchmarks/bench_flow_step.py -q

Shapes of the default model (SmolLM2-135M-like): H=9 query heads, Hkv=3, dh=64,
d_model=576; n in {256, 1024, 2048}; one layer; T=1 target at the last position.
Two rollout rows are timed:

* ``onehot``: r = one-hot(n-1), the top layer.  The blocked path only recomputes the
  last query tile here, so this mostly measures row skipping.
* ``dense``: r a probability row over all n positions, as in every lower layer once
  the rollout has spread; the blocked path must visit every causal (j, i) pair.

Peak memory of torch ops is invisible to ``tracemalloc``, so each result records in
``benchmark.extra_info`` the theoretical bytes of the attention buffer: H*n*n*4 for
the reference (which in fact keeps two such buffers alive, scores and
probabilities) versus H*block*n*4 (one probability tile) + H*T*n*4 (per-head flow) for
the blocked path.  No timing assertions.
"""

from __future__ import annotations

import pytest
import torch

from heta_fast.ops.flow.blocked import DEFAULT_BLOCK, flow_step_blocked
from heta_fast.ops.flow.naive import flow_step_reference, lse_reference

N_HEADS, N_KV, HEAD_DIM, D_MODEL = 9, 3, 64, 576
TARGETS = 1
FP32_BYTES = 4
SIZES = (256, 1024, 2048)


def _make_inputs(n: int, rows: str) -> dict:
    """q [H, n, dh], k [Hkv, n, dh], lse [H, n], r [1, n], vn [H, n] (fp32)."""
    gen = torch.Generator().manual_seed(n)
    q = 2.0 * torch.randn(N_HEADS, n, HEAD_DIM, generator=gen)
    k = torch.randn(N_KV, n, HEAD_DIM, generator=gen)
    scale = HEAD_DIM**-0.5
    if rows == "onehot":
        r = torch.zeros(TARGETS, n)
        r[0, n - 1] = 1.0
    else:
        r = torch.rand(TARGETS, n, generator=gen)
        r = r / r.sum(dim=-1, keepdim=True)
    return {
        "q": q,
        "k": k,
        "lse": lse_reference(q, k, scale),
        "scale": scale,
        "r": r,
        "vn": torch.rand(N_HEADS, n, generator=gen),
    }


_CACHE: dict = {}


def _inputs(n: int, rows: str) -> dict:
    """Inputs shared by both implementations of one (n, rows) group."""
    if (n, rows) not in _CACHE:
        _CACHE[(n, rows)] = _make_inputs(n, rows)
    return _CACHE[(n, rows)]


def _working_bytes(impl: str, n: int) -> int:
    """Theoretical size of the attention-sized buffers each implementation holds."""
    if impl == "reference":
        return N_HEADS * n * n * FP32_BYTES
    return (N_HEADS * min(DEFAULT_BLOCK, n) * n + N_HEADS * TARGETS * n) * FP32_BYTES


IMPLEMENTATIONS = {"reference": flow_step_reference, "blocked": flow_step_blocked}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("rows", ["onehot", "dense"])
@pytest.mark.parametrize("n", SIZES)
def test_bench_flow_step_cpu(benchmark, n, rows, impl):
    inputs = _inputs(n, rows)
    fn = IMPLEMENTATIONS[impl]
    benchmark.group = f"flow_step cpu H={N_HEADS} Hkv={N_KV} dh={HEAD_DIM} n={n} r={rows}"
    benchmark.extra_info["reference_bytes_HxNxNx4"] = N_HEADS * n * n * FP32_BYTES
    benchmark.extra_info["working_bytes"] = _working_bytes(impl, n)
    benchmark.extra_info["block"] = DEFAULT_BLOCK if impl == "blocked" else None
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()

    rounds = 3 if n >= 1024 else 10
    flow, r_next = benchmark.pedantic(fn, kwargs=inputs, rounds=rounds, warmup_rounds=1, iterations=1)

    # Correctness sanity only (not timing): both paths agree.
    assert flow.shape == (TARGETS, n) and torch.isfinite(flow).all()
    if impl != "reference":
        ref_flow, ref_r = flow_step_reference(**inputs)
        torch.testing.assert_close(flow, ref_flow, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r_next, ref_r, rtol=1e-4, atol=1e-6)
