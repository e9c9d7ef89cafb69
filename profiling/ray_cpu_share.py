"""Where a Ray run's time goes: its timeline and the CPU seconds of every process (issue 13 (c)).

    python profiling/ray_cpu_share.py [--records 8] [--concurrency 2] [--interval 0.5]

Runs ``attribute_ray`` on the first ``--records`` curated records (the benchmark's prompt and
target) on a local Ray instance of ``--concurrency`` CPUs, one torch thread per actor, while a
sampler thread reads every process's CPU time (psutil) each ``--interval`` seconds. Prints:

- the timeline: ``ray.init`` returned, the first row arrived, each later row, the end;
- the CPU seconds of the driver (this process), Ray's daemons (GCS, raylet, ...), each worker
  process, and everything else on the machine, over the run;
- each actor call (one record): when it started and ended, its user and system CPU seconds and
  minor page faults, and the thread it ran on (the constructor's and the calls' differ);
- each record's phase timings, and every process that used at least half a CPU-second.

``--glibc-defaults`` runs the actors without heta_fast.allocator's setting, for comparison.

No assertion: a measurement to read beside BENCHMARKS.md's pipeline table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "curated_qa_100.json"


def _records(n: int) -> list[dict]:
    """The benchmark's records (benchmarks/bench_pipeline.py): the first n curated examples."""
    from heta_fast import Attributor
    from heta_fast.evaluate.data import load_curated
    from heta_fast.evaluate.runner import pipeline_records

    return pipeline_records(Attributor.from_pretrained("smollm2-135m"), load_curated(DATA)[:n])


class CpuSampler(threading.Thread):
    """Every process's cumulative CPU seconds (user + system) and the first time each was seen busy."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.stop, self.t0 = interval, threading.Event(), time.perf_counter()
        self.first = {}  # pid -> (name, cmdline shortened, cpu seconds at first sight)
        self.kinds = {}  # pid -> what the process is (from its full command line at first sight)
        self.last = {}  # pid -> cpu seconds at last sight
        self.busy_at = {}  # pid -> seconds after t0 when its CPU first rose by 1 s over first sight

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            now = time.perf_counter() - self.t0
            for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
                info = proc.info
                if info["cpu_times"] is None:
                    continue
                cpu = info["cpu_times"].user + info["cpu_times"].system
                pid = info["pid"]
                if pid not in self.first:
                    cmdline = " ".join(info["cmdline"] or [])
                    self.first[pid] = (info["name"], cmdline[:80], cpu)
                    self.kinds[pid] = _kind(info["name"], cmdline, pid)
                self.last[pid] = cpu
                if pid not in self.busy_at and cpu - self.first[pid][2] >= 1.0:
                    self.busy_at[pid] = now
            self.stop.wait(self.interval)


def timed_attributor(log_path: str):
    """A RayAttributor that appends (pid, event, wall clock, CPU seconds) lines to ``log_path``:
    the constructor's start and end and each call's, as the actor sees them."""
    from heta_fast.distributed import RayAttributor

    def log(event: str) -> None:
        import resource

        use = resource.getrusage(resource.RUSAGE_SELF)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps([os.getpid(), event, time.time(), use.ru_utime, use.ru_stime, use.ru_minflt,
                                threading.get_ident()]) + "\n")

    class TimedAttributor(RayAttributor):
        def __init__(self, *args, **kwargs):
            log("init")
            super().__init__(*args, **kwargs)
            log("ready")

        def __call__(self, batch):
            log("call")
            try:
                return super().__call__(batch)
            finally:
                log("return")

    return TimedAttributor


def _kind(name: str, cmdline: str, pid: int) -> str:
    if pid == os.getpid():
        return "driver (this process)"
    if "ray::" in cmdline or "default_worker" in cmdline or name.startswith("ray::"):
        return "ray worker"
    for daemon in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor", "runtime_env"):
        if daemon in name or daemon in cmdline:
            return "ray daemons"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="actors keep glibc's malloc settings (HETA_FAST_KEEP_FREED_MEMORY=0)")
    args = parser.parse_args()
    if args.glibc_defaults:  # Ray's workers inherit the driver's environment
        os.environ["HETA_FAST_KEEP_FREED_MEMORY"] = "0"

    import ray

    from heta_fast import distributed
    from heta_fast.pipeline.writer import ResultWriter

    records = _records(args.records)
    arrivals = []
    write = ResultWriter.write

    def timed_write(self, row):  # when each row reaches the driver
        arrivals.append(time.perf_counter() - sampler.t0)
        return write(self, row)

    ResultWriter.write = timed_write
    with tempfile.TemporaryDirectory() as workdir:
        log_path = str(Path(workdir) / "actors.jsonl")
        distributed.RayAttributor = timed_attributor(log_path)
        sampler = CpuSampler(args.interval)
        wall0 = time.time()
        sampler.start()
        cwd = os.getcwd()
        os.chdir(workdir)  # Ray puts the driver's directory on its workers' path: not the repository
        try:
            distributed.start_local_priority()
            ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
                     logging_level="warning")
            init_done = time.perf_counter() - sampler.t0
            distributed.attribute_ray(records, Path(workdir) / "out", model="smollm2-135m", device="cpu",
                                      concurrency=args.concurrency, threads_per_worker=1, batch_size=1,
                                      progress="quiet")
            end = time.perf_counter() - sampler.t0
        finally:
            sampler.stop.set()
            sampler.join()
            ray.shutdown()
            os.chdir(cwd)
        from heta_fast.io import read_results

        rows = read_results(Path(workdir) / "out", form="records")
        events = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines()]
    print(f"ray.init returned at {init_done:.1f} s; first row at {arrivals[0]:.1f} s; end at {end:.1f} s")
    print("rows at: " + ", ".join(f"{t:.1f}" for t in arrivals))
    totals: dict[str, float] = {}
    for pid, (name, cmdline, cpu0) in sampler.first.items():
        used = sampler.last[pid] - cpu0
        kind = sampler.kinds[pid]
        totals[kind] = totals.get(kind, 0.0) + used
    print(f"CPU seconds over {end:.1f} s of wall time ({args.concurrency} CPUs given to Ray, "
          f"{os.cpu_count()} on the machine):")
    for kind, used in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:24s} {used:8.1f} s  ({used / end:.2f} of a core)")
    print("actor calls: start and end (seconds from the start), user and system CPU seconds, minor page faults")
    for pid in sorted({e[0] for e in events}):
        mine = [e for e in events if e[0] == pid]
        for (_, a, w0, u0, s0, f0, th), (_, b, w1, u1, s1, f1, _) in zip(mine[::2], mine[1::2]):
            print(f"  {pid} {a}-{b}: {w0 - wall0:6.1f} -> {w1 - wall0:6.1f}  user {u1 - u0:5.1f}  sys {s1 - s0:4.1f}  "
                  f"faults {f1 - f0:7d}  thread {th % 100000}")
    columns = [c for c in rows.columns if c.startswith("time_")]
    print("phase seconds per record (the result's timings):")
    print(rows[["id"] + columns].round(2).to_string(index=False))
    print("processes with at least 0.5 CPU s:")
    for pid, (name, cmdline, cpu0) in sorted(sampler.first.items(), key=lambda kv: kv[1][2] - sampler.last[kv[0]]):
        used = sampler.last[pid] - cpu0
        if used >= 0.5:
            busy = sampler.busy_at.get(pid)
            when = "never" if busy is None else f"{busy:.1f} s"
            print(f"  {pid} {name[:28]:28s} {used:6.1f} CPU s, busy from {when}: {cmdline[:60]}")


if __name__ == "__main__":
    main()
