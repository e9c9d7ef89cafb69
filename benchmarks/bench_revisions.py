"""The demo attribution with this tree and with another revision of heta-fast, side by side.

    HETA_BASE_REV=<rev> python -m pytest benchmarks/bench_revisions.py -q -s --benchmark-columns=min,rounds

The base revision is checked out into a temporary git worktree. Each round starts one worker
process per tree (base first, then this tree, so that a noisy machine slows both alike); a
worker loads the default model with one torch thread, runs one warm-up attribution and then
``REPEATS`` timed ones, and reports the wall time of each with its per-phase split and the file
it imported heta_fast from. The table gives the minimum over all runs of each tree and the
ratio head / base. No timing assertions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, REPEATS = 3, 3
PHASES = ("total", "forward", "flow", "curvature", "information")

# The worker imports the PyPI package `kernels` (transformers needs it) before the tree, whose
# top-level kernels/ folder would shadow it, is put first on the path.
WORKER = """
import json, sys, time
try:
    import kernels  # noqa: F401
except ImportError:
    pass
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import heta_fast
from heta_fast import Attributor
from heta_fast.cli import DEMO_PROMPT, DEMO_TARGET
attr = Attributor.from_pretrained("smollm2-135m")
attr.attribute(DEMO_PROMPT, DEMO_TARGET)
runs = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    res = attr.attribute(DEMO_PROMPT, DEMO_TARGET)
    runs.append({"total": time.perf_counter() - start, **res.timings})
print(json.dumps({"file": heta_fast.__file__, "runs": runs}))
"""


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    rev = os.environ.get("HETA_BASE_REV")
    if not rev:
        pytest.skip("set HETA_BASE_REV to the revision to compare this tree with")
    base = tmp_path_factory.mktemp("base") / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield {"base": base, "head": ROOT}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)


def _worker(tree: Path, cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", WORKER, str(tree), str(REPEATS)], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(tree.resolve()), out["file"]
    return out


def test_demo_attribution_base_against_head(benchmark, trees, tmp_path):
    runs: dict[str, list[dict]] = {"base": [], "head": []}

    def one_round():
        for name in ("base", "head"):
            runs[name] += _worker(trees[name], tmp_path)["runs"]

    benchmark.group = "demo attribution, base vs head"
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    best = {name: {p: min(r[p] for r in rs) for p in PHASES} for name, rs in runs.items()}
    benchmark.extra_info.update(base_rev=os.environ["HETA_BASE_REV"], best=best, runs=runs)
    lines = ["| phase | base min (s) | head min (s) | head / base |", "|---|---|---|---|"]
    for p in PHASES:
        base, head = best["base"][p], best["head"][p]
        lines.append(f"| {p} | {base:.3f} | {head:.3f} | {head / base:.3f} |")
    print(f"\n{ROUNDS} rounds x {REPEATS} runs per tree, one torch thread\n" + "\n".join(lines))
