"""50 clients, 200 requests: every job finishes once, none is lost or duplicated, and each result
equals the in-process result of the same request and seed."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.service.helpers import metric, wait_done

CLIENTS, REQUESTS = 50, 200
# Cheap requests (4-6 word prompts; all three components with a small probing budget, or a subset).
CHEAP = {"probing_repeats": 1, "probing_patterns": 2}
REQUEST_KINDS = [
    ("w1 w2 w3 w4", " w5", {**CHEAP, "seed": 0}),
    ("w5 w6 w7 w8 w9 w10", " w11 w12", {**CHEAP, "seed": 3, "beta": 0.25}),
    ("w3 w9 w2 w7 w1", " w4", {"components": ["flow", "information"], "seed": 7}),
    ("w2 w4 w6 w8", " w10", {"components": ["flow", "information"], "mask_scheme": "unk"}),
    ("w11 w12 w13 w14 w15", " w16", {"components": ["flow"], "seed": 2}),
    ("w1 w3 w5 w7 w9", " w2", {"components": ["information"], "gamma": 2.0}),
]


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    """In-process results of every request kind (same model folder, same seeds)."""
    from heta_fast import Attributor, HETAConfig

    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    return [attributor.attribute(p, t, config=HETAConfig().replace(**opts)) for p, t, opts in REQUEST_KINDS]


def test_fifty_clients_two_hundred_requests(service_url, expected):
    from heta_fast.result import Attribution

    before = httpx.get(service_url + "metrics", timeout=10).text
    lock, seen = threading.Lock(), []

    def client(index: int) -> None:
        with httpx.Client(timeout=30) as http:
            for k in range(index, REQUESTS, CLIENTS):  # 4 requests per client
                kind = k % len(REQUEST_KINDS)
                prompt, target, options = REQUEST_KINDS[kind]
                response = http.post(service_url + "v1/attributions", params={"wait": 20},
                                     json={"prompt": prompt, "target": target, "options": options})
                assert response.status_code in (200, 202), response.text
                view = response.json()
                if view["status"] not in ("done", "failed", "cancelled"):
                    view = wait_done(http, service_url, view["id"], timeout=120)
                with lock:
                    seen.append((kind, view))

    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client, i) for i in range(CLIENTS)]:
            future.result(timeout=300)
    print(f"{REQUESTS} requests from {CLIENTS} clients in {time.monotonic() - start:.1f} s")

    assert len(seen) == REQUESTS
    assert len({view["id"] for _, view in seen}) == REQUESTS  # no job shared or duplicated
    for kind, view in seen:
        assert view["status"] == "done", view.get("error")
        got, want = Attribution.from_dict(view["result"]), expected[kind]
        assert got.context_tokens == want.context_tokens and got.target_ids == want.target_ids
        assert got.config == want.config
        for name in ("scores", "flow", "curvature", "information"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None) == (b is None), name
            if a is not None:  # float64 in JSON holds the float32 values exactly
                assert torch.equal(a, b.double()), (name, kind)
    after = httpx.get(service_url + "metrics", timeout=10).text
    # Each job reached "done" exactly once and nothing else was submitted meanwhile.
    for name in ('heta_jobs_total{status="done"}', "heta_jobs_submitted_total"):
        assert metric(after, name) - metric(before, name) == REQUESTS, name
