"""End-to-end default attribution per precision, stage by stage, with each term's quality against
float32 (issue 16, "Measured": float32 against ``"auto"`` at n = 128 and 512).

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_precision.py -q -s -p no:cacheprovider -k 128
    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_precision.py -q -s -p no:cacheprovider -k 512

The default model and config, n context tokens of the benchmarks' filler text and one target (the
next filler token); for each n the precisions run one after another in one process, float32 first
(the reference of the Spearman columns). Prints, per run, the wall seconds of each phase (one
torch thread, so about the CPU seconds), the mode each model stage ran in, and the Spearman
correlation of the flow gate, I, S and the scores against the float32 run. No timing assertions.
"""
from __future__ import annotations

import time

import pytest
import torch

from benchmarks.conftest import prompt_ids

LENGTHS = (128, 512)
PRECISIONS = ("float32", "auto", "bfloat16-split", "bfloat16")
TERMS = ("flow", "information", "curvature", "scores")
_reference: dict[int, object] = {}
_rows: list[str] = []


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n", LENGTHS)
def test_precision_end_to_end(benchmark, default_attributor, n, precision):
    from scipy.stats import spearmanr

    from heta_fast.precision import MODEL_STAGES, stage_mode

    torch.set_num_threads(1)
    att = default_attributor
    ids = prompt_ids(att.tokenizer, n + 1)
    config = att.config.replace(precision=precision)
    start = time.perf_counter()
    result = benchmark.pedantic(att.attribute, args=(ids[:n], ids[n:]), kwargs={"config": config},
                                rounds=1, iterations=1)
    total = time.perf_counter() - start
    stages = {s: stage_mode(precision, s, att.adapter.device, att.adapter.dtype) or "float32" for s in MODEL_STAGES}
    if precision == "float32":
        _reference[n] = result
    ref = _reference.get(n)
    rho = {t: float(spearmanr(getattr(ref, t)[0], getattr(result, t)[0])[0]) if ref is not None else float("nan")
           for t in TERMS}
    phases = " | ".join(f"{result.timings.get(p, 0.0):.1f}" for p in ("forward", "flow", "curvature", "information"))
    _rows.append(f"| {n} | {precision} | {stages['forward']} / {stages['curvature']} | {total:.1f} | {phases} | "
                 + " | ".join(f"{rho[t]:.4f}" for t in TERMS) + " |")
    benchmark.extra_info.update({"n": n, "precision": precision, "stages": stages, "spearman": rho,
                                 **{f"phase_{k}_s": v for k, v in result.timings.items()}})
    print("\n| n | precision | forward / curvature mode | total s | forward | flow | curvature | information | "
          "ρ flow | ρ I | ρ S | ρ scores |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(_rows))
    assert torch.isfinite(result.scores).all()
