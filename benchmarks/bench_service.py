"""The service against in-process calls on the default model (CPU), side by side.

    python -m pytest benchmarks/bench_service.py -q -s -p no:cacheprovider --benchmark-columns=median,rounds

* latency: one short attribution (``"The capital of France is"`` -> ``" Paris"``, default config),
  ROUNDS times in-process (``Attributor.attribute``) and through the service (``Client.attribute``:
  HTTP, queue, worker, JSON both ways), p50 / p95 of each;
* throughput: CLIENTS clients each sending PER_CLIENT requests concurrently to the service against
  the same number of requests in a sequential in-process loop, requests per second.

The service runs in its own process on 127.0.0.1 (``heta-fast serve`` with the default model); the
last test prints the table BENCHMARKS.md records. No timing assertions (a shared machine).
"""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from heta_fast import HETAConfig

PROMPT, TARGET = "The capital of France is", " Paris"
# HETA_BENCH_MODEL / HETA_BENCH_ROUNDS: another model (e.g. a folder) or fewer rounds for a quick check.
MODEL = os.environ.get("HETA_BENCH_MODEL", "smollm2-135m")
ROUNDS, CLIENTS, PER_CLIENT = int(os.environ.get("HETA_BENCH_ROUNDS", "10")), 8, 2
CONFIG = HETAConfig()
RESULTS: dict[str, object] = {}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    pytest.importorskip("fastapi")
    from heta_fast.client import Client
    from tests.service.helpers import running_service

    with running_service(MODEL, cwd=tmp_path_factory.mktemp("bench-serve")) as (url, _):
        c = Client(url, timeout=600)
        c.attribute(PROMPT, TARGET, config=CONFIG)  # warm up
        yield c


@pytest.fixture(scope="module")
def in_process():
    from heta_fast import Attributor

    return Attributor.from_pretrained(MODEL, config=CONFIG)


def _latencies(call, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def test_latency_in_process(benchmark, in_process):
    in_process.attribute(PROMPT, TARGET, config=CONFIG)  # warm up
    RESULTS["in-process"] = benchmark.pedantic(
        lambda: _latencies(lambda: in_process.attribute(PROMPT, TARGET, config=CONFIG), ROUNDS), rounds=1)


def test_latency_service(benchmark, client):
    RESULTS["service"] = benchmark.pedantic(
        lambda: _latencies(lambda: client.attribute(PROMPT, TARGET, config=CONFIG), ROUNDS), rounds=1)


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


def test_print_table():
    if not {"in-process", "service", "sequential rps", "concurrent rps"} <= set(RESULTS):
        pytest.skip("run the whole file")
    print()
    print("| | p50 (s) | p95 (s) |")
    print("|---|---|---|")
    for name in ("in-process", "service"):
        values = sorted(RESULTS[name])
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(f"| {name} ({ROUNDS} calls) | {statistics.median(values):.3f} | {p95:.3f} |")
    overhead = statistics.median(RESULTS["service"]) / statistics.median(RESULTS["in-process"]) - 1
    print(f"service overhead at p50: {100 * overhead:+.1f}%")
    print(f"throughput: sequential in-process {RESULTS['sequential rps']:.3f} req/s, "
          f"{CLIENTS} concurrent clients through the service {RESULTS['concurrent rps']:.3f} req/s")
