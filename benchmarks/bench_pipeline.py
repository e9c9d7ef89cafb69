"""Records per second of a whole data set on the default model, side by side (issue 13):

* ``loop-1thread`` / ``loop-2threads``: a Python loop of ``Attributor.attribute`` calls;
* ``run``: the pipeline in one process (``run_to_directory``: the scheduler, part files), one
  torch thread, so that it differs from ``loop-1thread`` only by what the scheduler does
  (``batching="auto"``: on the CPU one record after another);
* ``run-shared``: the same with ``batching="on"``: groups of up to 8 records of similar length
  share the capture forward, the curvature's probe passes and the packed masked passes;
* ``run-2threads`` / ``run-shared-2threads``: ``run`` / ``run-shared`` with two torch threads, as
  ``heta-fast run`` runs on this 2-core machine by default (torch's default: a thread per core);
* ``ray-2actors``: ``attribute_ray`` on a local 2-CPU Ray instance, 2 actors of one torch thread;
* ``2-shards``: two ``heta-fast run --shard I/2`` processes of one thread each, into one directory.

32 curated records (``../shared/data/curated_qa_100.json``): prompt ``input_text + "\\nAnswer:"``,
target the first token of ``" " + answer``. Ray and the shard processes are timed from start to
finish (actor start and model load included); extra_info has the records/s and the machine's
1-minute load average before and after the variant (other processes share the CPU: read it).

    python -m pytest benchmarks/bench_pipeline.py -q -s --benchmark-columns=min,rounds

HETA_BENCH_RECORDS=N: fewer records for a quick check. No timing assertions.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

N_RECORDS = int(os.environ.get("HETA_BENCH_RECORDS", "32"))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "curated_qa_100.json"
VARIANTS = ("loop-1thread", "run", "run-shared", "ray-2actors", "2-shards", "loop-2threads", "run-2threads",
            "run-shared-2threads")


@pytest.fixture(scope="module")
def records(default_attributor):
    if not DATA.exists():
        pytest.skip(f"{DATA} is not there (../shared/ beside the repository)")
    from heta_fast.evaluate.data import load_curated
    from heta_fast.evaluate.runner import pipeline_records

    return pipeline_records(default_attributor, load_curated(DATA)[:N_RECORDS])


def _loop(attr, records, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [attr.attribute(r["prompt"], r["target"]) for r in records]
    finally:
        torch.set_num_threads(saved)


def _run(attr, records, out, batching="auto", threads=1):
    from heta_fast.pipeline.run import run_to_directory

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_to_directory(attr, records, out, progress="quiet", batching=batching)
    finally:
        torch.set_num_threads(saved)


def _ray(records, out, workdir):
    import ray

    from heta_fast.distributed import attribute_ray, start_local_priority

    start_local_priority()  # workers at niceness 0, as when `run --ray` starts Ray itself
    cwd = os.getcwd()
    os.chdir(workdir)  # Ray puts the driver's directory on its workers' path: not the repository (kernels/)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    finally:
        os.chdir(cwd)
    try:
        return attribute_ray(records, out, model="smollm2-135m", device="cpu", concurrency=2,
                             threads_per_worker=1, batch_size=1, progress="quiet")
    finally:
        ray.shutdown()


def _shards(data, out, workdir):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "heta_fast", "run", "-q", "--input", str(data), "--output", str(out)]
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/2"], cwd=workdir, env=env) for i in range(2)]
    return [p.wait() for p in procs]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipeline_records_per_second(benchmark, default_attributor, records, tmp_path, variant):
    benchmark.group = f"pipeline: {N_RECORDS} curated records, default model"
    attr = default_attributor
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    runs = {
        "loop-1thread": lambda: _loop(attr, records, 1),
        "loop-2threads": lambda: _loop(attr, records, 2),
        "run": lambda: _run(attr, records, tmp_path / "out"),
        "run-shared": lambda: _run(attr, records, tmp_path / "out", batching="on"),
        "run-2threads": lambda: _run(attr, records, tmp_path / "out", threads=2),
        "run-shared-2threads": lambda: _run(attr, records, tmp_path / "out", batching="on", threads=2),
        "ray-2actors": lambda: _ray(records, tmp_path / "out", tmp_path),
        "2-shards": lambda: _shards(data, tmp_path / "out", tmp_path),
    }
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    out = benchmark.pedantic(runs[variant], rounds=1, iterations=1)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    if variant == "2-shards":
        assert out == [0, 0]
    if variant.startswith("run") or variant in ("ray-2actors", "2-shards"):
        from heta_fast.io import read_results

        table = read_results(tmp_path / "out", form="records")
        assert len(table) == N_RECORDS and table.ok.all()
    benchmark.extra_info.update(records=N_RECORDS, seconds=round(seconds, 2),
                                records_per_s=round(N_RECORDS / seconds, 4),
                                load_before=round(load_before, 2), load_after=round(load_after, 2))
    print(f"\n{variant}: {N_RECORDS} records in {seconds:.1f} s = {N_RECORDS / seconds:.3f} records/s "
          f"(1-min load average {load_before:.2f} before, {load_after:.2f} after)")
