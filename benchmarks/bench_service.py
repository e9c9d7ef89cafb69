"""The service against in-process calls on the default model (CPU), side by side.

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_service.py -q -s -p no:cacheprovider \
        --benchmark-columns=median,rounds

* latency: one short attribution (``"The capital of France is"`` -> ``" Paris"``, default config),
  ROUNDS times in-process (``Attributor.attribute``) and through the service (``Client.attribute``:
  HTTP, admission, queue, worker, JSON both ways), alternating one call of each so that a change
  in the machine's load hits both alike; p50 / p95 of each and the median of the per-pair ratios;
* throughput: CLIENTS clients each sending PER_CLIENT requests concurrently to the service against
  the same number of requests in a sequential in-process loop, requests per second.

One torch thread in each process (this one and the service's, ``OMP_NUM_THREADS=1``): the two
never compete for the same cores beyond what the machine's other work takes. The service runs in
its own process on 127.0.0.1 (``heta-fast serve`` with the default model). The last test prints
the table BENCHMARKS.md records. No timing assertions (a shared machine); the service's numbers
are checked equal to in-process ones.
"""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from heta_fast import HETAConfig

PROMPT, TARGET = "The capital of France is", " Paris"
# HETA_BENCH_MODEL / HETA_BENCH_ROUNDS: another model (e.g. a folder) or fewer rounds for a quick check.
MODEL = os.environ.get("HETA_BENCH_MODEL", "smollm2-135m")
ROUNDS, CLIENTS, PER_CLIENT = int(os.environ.get("HETA_BENCH_ROUNDS", "10")), 8, 2
CONFIG = HETAConfig()
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RESULTS: dict[str, object] = {}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    pytest.importorskip("fastapi")
    from heta_fast.client import Client
    from tests.service.helpers import running_service

    with running_service(MODEL, cwd=tmp_path_factory.mktemp("bench-serve"), env_extra=ONE_THREAD) as (url, _):
        c = Client(url, timeout=600)
        c.attribute(PROMPT, TARGET, config=CONFIG)  # warm up
        yield c


@pytest.fixture(scope="module")
def in_process():
    """The in-process Attributor, run with one torch thread like the service's process."""
    from heta_fast import Attributor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        attributor = Attributor.from_pretrained(MODEL, config=CONFIG)
        attributor.attribute(PROMPT, TARGET, config=CONFIG)  # warm up
        yield attributor
    finally:
        torch.set_num_threads(threads)


def _timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def test_latency_side_by_side(benchmark, in_process, client):
    def alternate():
        local, remote = [], []
        for _ in range(ROUNDS):
            seconds, want = _timed(lambda: in_process.attribute(PROMPT, TARGET, config=CONFIG))
            local.append(seconds)
            seconds, got = _timed(lambda: client.attribute(PROMPT, TARGET, config=CONFIG))
            remote.append(seconds)
            assert torch.equal(got.scores, want.scores.double())  # the same numbers, not only the same time
        return local, remote

    RESULTS["in-process"], RESULTS["service"] = benchmark.pedantic(alternate, rounds=1)


def test_throughput_sequential_in_process(benchmark, in_process):
    def loop():
        start = time.perf_counter()
        for _ in range(CLIENTS * PER_CLIENT):
            in_process.attribute(PROMPT, TARGET, config=CONFIG)
        return CLIENTS * PER_CLIENT / (time.perf_counter() - start)

    RESULTS["sequential rps"] = benchmark.pedantic(loop, rounds=1)


def test_throughput_concurrent_service(benchmark, client):
    def burst():
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            jobs = [pool.submit(lambda: [client.attribute(PROMPT, TARGET, config=CONFIG) for _ in range(PER_CLIENT)])
                    for _ in range(CLIENTS)]
            for job in jobs:
                job.result()
        return CLIENTS * PER_CLIENT / (time.perf_counter() - start)

    RESULTS["concurrent rps"] = benchmark.pedantic(burst, rounds=1)


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def test_print_table():
    if not {"in-process", "service", "sequential rps", "concurrent rps"} <= set(RESULTS):
        pytest.skip("run the whole file")
    local, remote = RESULTS["in-process"], RESULTS["service"]
    p50 = (statistics.median(local), statistics.median(remote))
    p95 = (_p95(local), _p95(remote))
    pairs = statistics.median(r / w for r, w in zip(remote, local))
    print()
    print(f"| {ROUNDS} calls each, alternating | in-process (s) | service (s) | service / in-process |")
    print("|---|---|---|---|")
    print(f"| p50 | {p50[0]:.3f} | {p50[1]:.3f} | {p50[1] / p50[0]:.3f} |")
    print(f"| p95 | {p95[0]:.3f} | {p95[1]:.3f} | {p95[1] / p95[0]:.3f} |")
    print(f"| median of the per-pair ratios | | | {pairs:.3f} |")
    print(f"| min | {min(local):.3f} | {min(remote):.3f} | {min(remote) / min(local):.3f} |")
    seq, conc = RESULTS["sequential rps"], RESULTS["concurrent rps"]
    print()
    print(f"| throughput, {CLIENTS * PER_CLIENT} requests | req/s | ratio |")
    print("|---|---|---|")
    print(f"| sequential in-process loop | {seq:.3f} | 1.000 |")
    print(f"| {CLIENTS} concurrent clients through the service | {conc:.3f} | {conc / seq:.3f} |")
