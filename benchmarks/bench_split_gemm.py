"""The split-bf16 linear against float32, per linear of the default model (issue 16 §1, the bound of
the information term's speed-up).

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_split_gemm.py -q -s -p no:cacheprovider

For each linear shape of SmolLM2-135M (d = 576, 3 key/value heads of 64, MLP width 1536) at
M = 4096 activation rows (one masked pass's worth), side by side in one process: the float32
product, the split product as the engine runs it (the halves, then MKL's two bf16 → float32
GEMMs), its two parts alone, and torch's own bf16 product (bf16 output, which the split mode
cannot use: it rounds the result). Prints milliseconds, GFLOP/s of each product and the ratios
to float32. Skipped where the CPU has no native bf16 or torch exports no MKL bf16 GEMM. No timing
assertions.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import best_time
from heta_fast.ops import split_bf16
from heta_fast.precision import native_bf16

ROWS = 4096
# (name, K, N): the q, k/v, o, gate/up and down projections.
SHAPES = (("q", 576, 576), ("k, v", 576, 192), ("o", 576, 576), ("gate, up", 576, 1536), ("down", 1536, 576))
REPEATS = 20
_rows: list[str] = []


@pytest.mark.skipif(not (native_bf16(torch.device("cpu")) and split_bf16.available()),
                    reason="needs a CPU with native bf16 and torch's MKL bf16 GEMM")
@pytest.mark.parametrize("name,k,n", SHAPES, ids=[s[0] for s in SHAPES])
def test_split_linear_against_float32(benchmark, name, k, n):
    from heta_fast.ops.split_bf16 import mkl

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(ROWS, k, generator=gen), torch.randn(n, k, generator=gen) / k**0.5
    w_bf16 = w.to(torch.bfloat16)
    halves = split_bf16.split_halves(x)
    times = {
        "float32": best_time(lambda: x @ w.t(), REPEATS),
        "split": best_time(lambda: split_bf16.split_bf16_linear(x, w_bf16), REPEATS),
        "halves": best_time(lambda: split_bf16.split_halves(x), REPEATS),
        "gemms": best_time(lambda: mkl.split_linear(x.shape, w_bf16, None, halves), REPEATS),
        "torch bf16": best_time(lambda: halves[0] @ w_bf16.t(), REPEATS),
    }
    benchmark.pedantic(split_bf16.split_bf16_linear, args=(x, w_bf16), rounds=1, iterations=1)
    flops = 2 * ROWS * k * n
    rate = {"float32": flops, "gemms": 2 * flops, "torch bf16": flops}
    cells = [f"{times[c] * 1e3:.2f}" + (f" ({rate[c] / times[c] / 1e9:.0f})" if c in rate else "") for c in times]
    _rows.append(f"| {name} | {k}×{n} | " + " | ".join(cells)
                 + f" | {times['float32'] / times['split']:.2f}× | {times['float32'] / times['gemms']:.2f}× |")
    benchmark.extra_info.update({"shape": [ROWS, k, n], **{f"{c}_s": t for c, t in times.items()}})
    print(f"\n{ROWS} rows; ms (GFLOP/s)\n| linear | K×N | float32 | split | its halves | its 2 GEMMs | torch bf16 "
          "(bf16 out) | float32 / split | float32 / GEMMs only |\n|---|---|---|---|---|---|---|---|---|\n"
          + "\n".join(_rows))
    torch.testing.assert_close(split_bf16.split_bf16_linear(x, w_bf16), x @ w.t(), rtol=0.05, atol=0.05)
