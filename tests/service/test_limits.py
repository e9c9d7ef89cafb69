"""Limits on a service with a queue of 2, a 4 s job time limit, 3 kept results and a results folder
(it also has a token: tests/service/test_access.py)."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.service.helpers import TOKEN, metric, wait_done

AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"prompt": "w1 w2 w3", "target": " w4", "options": {"components": ["flow"]}}
# 400,000 Hessian-vector products (hours): runs until the time limit or a cancel stops it.
ENDLESS = {"prompt": "w1 w2 w3 w4", "target": " w5", "options": {"estimator": "exact", "num_probes": 100_000}}


@pytest.fixture(scope="module")
def limited(limited_service):
    url, results = limited_service
    with httpx.Client(timeout=30, headers=AUTH) as http:
        yield url, http, results


def _wait_status(http, url, job_id, wanted, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = http.get(f"{url}v1/attributions/{job_id}").json()
        if view["status"] == wanted:
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never became {wanted}")


def test_full_queue_429_cancel_frees_a_slot_timeout_fails_worker_goes_on(limited):
    url, http, _ = limited
    busy = http.post(url + "v1/attributions", json=ENDLESS).json()
    _wait_status(http, url, busy["id"], "running")
    queued = [http.post(url + "v1/attributions", json=QUICK) for _ in range(2)]
    assert [r.status_code for r in queued] == [202, 202]
    full = http.post(url + "v1/attributions", json=QUICK)
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    assert full.json()["detail"].startswith("queue: ")
    # Cancelling a queued job frees its slot at once.
    cancelled = http.delete(f"{url}v1/attributions/{queued[0].json()['id']}").json()
    assert cancelled["status"] == "cancelled"
    again = http.post(url + "v1/attributions", json=QUICK)
    assert again.status_code == 202
    # The endless job fails with a typed error at its time limit; the queued ones then finish.
    failed = wait_done(http, url, busy["id"], timeout=30)
    assert failed["status"] == "failed" and failed["error"]["type"] == "JobTimeoutError"
    for job_id in (queued[1].json()["id"], again.json()["id"]):
        view = wait_done(http, url, job_id)
        assert view["status"] == "done", view["error"]
    text = http.get(url + "metrics").text
    assert metric(text, 'heta_job_failures_total{type="JobTimeoutError"}') >= 1
    assert metric(text, "heta_queue_depth") == 0


def test_cancel_a_running_job(limited):
    url, http, _ = limited
    job = http.post(url + "v1/attributions", json=ENDLESS).json()
    _wait_status(http, url, job["id"], "running")
    assert http.delete(f"{url}v1/attributions/{job['id']}").status_code == 200
    view = wait_done(http, url, job["id"], timeout=10)
    assert view["status"] == "cancelled" and view["error"]["type"] == "JobCancelledError"
    after = http.post(url + "v1/attributions", params={"wait": 30}, json=QUICK).json()
    assert after["status"] == "done", after["error"]


def test_results_kept_by_count_and_written_to_the_folder(limited):
    url, http, folder = limited
    ids = []
    for _ in range(5):  # one after the other: they finish in this order
        ids.append(http.post(url + "v1/attributions", params={"wait": 30}, json=QUICK).json()["id"])
        view = wait_done(http, url, ids[-1])
        assert view["status"] == "done", view["error"]
    codes = [http.get(f"{url}v1/attributions/{i}").status_code for i in ids]
    assert codes == [404, 404, 200, 200, 200]  # only the 3 newest finished jobs are kept
    assert {f"{i}.json" for i in ids} <= {p.name for p in folder.iterdir()}
