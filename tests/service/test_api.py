"""The endpoints of a running service: results, status, events, models, metrics, one-line 4xx."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.service.helpers import wait_done

CHEAP = {"probing_repeats": 1, "probing_patterns": 2}
NOT_IDS = "must be text or a list of integer token ids;"


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=30) as client:
        yield client


def test_wait_answers_with_the_result(service_url, http):
    r = http.post(service_url + "v1/attributions", params={"wait": 30},
                  json={"prompt": "w1 w2 w3", "target": " w4", "options": CHEAP})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["status"] == "done" and view["result"]["format_version"] >= 1
    assert view["result"]["context_tokens"] == ["w1", "w2", "w3"]
    assert len(view["result"]["scores"][0]) == 3
    again = http.get(f"{service_url}v1/attributions/{view['id']}").json()
    assert again["result"] == view["result"]


def test_without_wait_202_then_done(service_url, http):
    r = http.post(service_url + "v1/attributions", json={"prompt": "w1 w2 w3 w4", "generate": 2,
                                                         "options": CHEAP})
    assert r.status_code in (200, 202) and r.json()["status"] in ("queued", "running", "done")
    view = wait_done(http, service_url, r.json()["id"])
    assert view["status"] == "done" and len(view["result"]["target_tokens"]) >= 1


def test_events_stream_phases_then_done(service_url, http):
    """A job watched from the queue: its phases arrive in the engine's order, then one ``done`` event.

    A first job holds the worker, so the watched one is still queued when its stream opens and every
    change of its state reaches the stream (changes between two reads are sent as the latest)."""
    slow = {"estimator": "exact", "num_probes": 64}  # a curvature phase long enough to be seen
    prompt = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"
    first = http.post(service_url + "v1/attributions", json={"prompt": prompt, "target": " w13", "options": slow})
    deadline = time.monotonic() + 60
    while http.get(f"{service_url}v1/attributions/{first.json()['id']}").json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job = http.post(service_url + "v1/attributions",
                    json={"prompt": prompt, "target": " w4 w5", "options": slow}).json()
    events = []
    with http.stream("GET", f"{service_url}v1/attributions/{job['id']}/events", timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "done" and names.count("done") == 1, names
    assert events[-1][1]["status"] == "done"
    order = ["forward", "flow", "curvature", "information"]
    phases = [data["phase"] for _, data in events if data.get("phase")]
    assert "curvature" in phases and set(phases) <= set(order), phases
    assert phases == sorted(phases, key=order.index), phases  # never back to an earlier phase


def test_models_and_health(service_url, http):
    info = http.get(service_url + "v1/models").json()["models"][0]
    assert info["model_type"] == "llama" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["max_context"] > 0 and "[BOS]" in info["special_tokens"]
    assert http.get(service_url + "healthz").json() == {"status": "ok"}


def test_metrics_are_prometheus_text(service_url, http):
    http.post(service_url + "v1/attributions", params={"wait": 30}, json={"prompt": "w1 w2", "target": " w3"})
    text = http.get(service_url + "metrics").text
    for name in ("heta_requests_total{", "heta_queue_depth ", "heta_jobs_total{", "heta_phase_seconds_bucket{",
                 "heta_job_seconds_count "):
        assert name in text, name


@pytest.mark.parametrize("body, status, field", [
    ({"prompt": "w1 w2", "target": " w3", "options": {"beta": -1}}, 422, "options: beta"),
    ({"prompt": "w1 w2", "target": " w3", "options": {"estimator": "magic"}}, 422, "options: unknown estimator"),
    ({"prompt": "w1 w2", "target": " w3", "options": {"nope": 1}}, 422, "options.nope"),
    ({"prompt": "w1 w2"}, 422, "target:"),
    ({"target": " w3"}, 422, "prompt:"),
    ({"prompt": 5, "target": " w3"}, 422, "prompt:"),
    ({"prompt": "", "target": " w3"}, 422, "prompt/target: the prompt is empty"),
    ({"prompt": [1, 2, 10**9], "target": " w3"}, 422, "prompt/target:"),
    ({"prompt": "w1", "generate": 0}, 422, "generate:"),
    ({"prompt": "w1 " * 30000, "target": " w3"}, 413, "prompt: "),
    ({"messages": [{"role": "user", "content": "w1"}], "target": " w3"}, 422, "messages: "),
    ({"messages": [], "target": " w3"}, 422, "messages: "),  # an empty list is still the field given
    # Values of another JSON type are refused, as the library refuses them, never converted.
    ({"prompt": [4, True], "target": " w3"}, 422, f"prompt: {NOT_IDS} element 1 is true"),
    ({"prompt": ["4", "5"], "target": " w3"}, 422, f'prompt: {NOT_IDS} element 0 is "4"'),
    ({"prompt": [4, 5.0], "target": [6]}, 422, f"prompt: {NOT_IDS} element 1 is 5.0"),
    ({"prompt": [4, 5], "target": [True]}, 422, f"target: {NOT_IDS} element 0 is true"),
    ({"prompt": "w1 w2", "target": " w3", "options": {"beta": "0.7"}}, 422,
     'options.beta: Input should be a valid number, got "0.7"'),
    ({"prompt": "w1 w2", "target": " w3", "options": {"beta": True}}, 422,
     "options.beta: Input should be a valid number, got true"),
    ({"prompt": "w1 w2", "target": " w3", "options": {"num_probes": 3.0}}, 422,
     "options.num_probes: Input should be a valid integer, got 3.0"),
    ({"prompt": "w1 w2", "target": " w3", "options": {"use_fisher": "yes"}}, 422,
     'options.use_fisher: Input should be a valid boolean, got "yes"'),
    ({"prompt": "w1", "generate": "2"}, 422, 'generate: Input should be a valid integer, got "2"'),
    ({"prompt": "w1", "generate": 2.0}, 422, "generate: Input should be a valid integer, got 2.0"),
])
def test_bad_input_is_a_one_line_4xx_naming_the_field(service_url, http, body, status, field):
    r = http.post(service_url + "v1/attributions", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail.startswith(field) and "\n" not in detail, detail


@pytest.mark.parametrize("wait", ["NaN", "nan", "inf", "-inf", "-1", "3601", "soon"])
def test_wait_must_be_a_finite_number_of_seconds(service_url, http, wait):
    expected = f'query.wait: must be a finite number of seconds in [0, 3600]; got "{wait}"'
    r = http.post(service_url + "v1/attributions", params={"wait": wait}, json={"prompt": "w1", "target": " w2"})
    assert (r.status_code, r.json()["detail"]) == (422, expected)
    r = http.get(service_url + "v1/attributions/nope", params={"wait": wait})
    assert (r.status_code, r.json()["detail"]) == (422, expected)


def test_an_integer_weight_runs_as_in_the_library(service_url, http):
    """``beta: 1`` is 1.0, as ``HETAConfig(beta=1)`` reads it (strict types, but not stricter than the library)."""
    r = http.post(service_url + "v1/attributions", params={"wait": 30},
                  json={"prompt": [4, 5], "target": [6], "options": {**CHEAP, "beta": 1, "components": "flow"}})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["config"]["beta"] == 1.0 and r.json()["result"]["config"]["components"] == ["flow"]


def test_malformed_json_unknown_id_and_big_body(service_url, http):
    r = http.post(service_url + "v1/attributions", content=b"{bad", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON")
    assert http.get(service_url + "v1/attributions/nope").status_code == 404
    assert http.delete(service_url + "v1/attributions/nope").status_code == 404
    r = http.post(service_url + "v1/attributions", content=b"x" * 1_100_000,
                  headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"].startswith("body:")


def test_cancel_a_finished_job_keeps_its_result(service_url, http):
    view = http.post(service_url + "v1/attributions", params={"wait": 30},
                     json={"prompt": "w1 w2", "target": " w3", "options": CHEAP}).json()
    assert view["status"] == "done"
    assert http.delete(f"{service_url}v1/attributions/{view['id']}").json()["status"] == "done"
    time.sleep(0.05)
    assert http.get(f"{service_url}v1/attributions/{view['id']}").json()["status"] == "done"
