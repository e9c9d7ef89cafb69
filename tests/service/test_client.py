"""heta_fast.client.Client against a running service: the same numbers as in-process, typed errors."""
from __future__ import annotations

import http.server
import re
import threading

import numpy as np
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.client import OPTION_FIELDS, Client, ServiceError
from heta_fast.errors import ConfigError, InputError, JobCancelledError

CONFIG = HETAConfig(probing_repeats=1, probing_patterns=2, seed=11, beta=0.3)


@pytest.fixture(scope="module")
def attributor(tiny_model_dir):
    from heta_fast import Attributor

    return Attributor.from_pretrained(str(tiny_model_dir))


def _same(a, b) -> None:
    assert a.context_tokens == b.context_tokens and a.target_tokens == b.target_tokens
    for name in ("scores", "flow", "curvature", "information"):
        assert torch.equal(getattr(a, name), getattr(b, name).double()), name


def test_attribute_equals_in_process(service_url, attributor):
    client = Client(service_url)
    _same(client.attribute("w1 w2 w3 w4", " w5", config=CONFIG),
          attributor.attribute("w1 w2 w3 w4", " w5", config=CONFIG))
    ids = torch.tensor([5, 6, 7])
    _same(client.attribute(ids, [9, 10], config=CONFIG), attributor.attribute(ids, [9, 10], config=CONFIG))


def test_generate_equals_in_process(service_url, attributor):
    got = Client(service_url).generate_and_attribute("w1 w2 w3", 2, config=CONFIG)
    _same(got, attributor.generate_and_attribute("w1 w2 w3", 2, config=CONFIG))


def test_submit_result_cancel(service_url):
    client = Client(service_url)
    job = client.submit("w1 w2 w3", " w4", components=["flow"])
    assert client.result(job, timeout=60).curvature is None
    assert client.cancel(job)["status"] == "done"
    slow = client.submit("w1 w2 w3", " w4", estimator="exact", num_probes=100_000)
    assert client.cancel(slow)["status"] in ("cancelled", "queued", "running")
    with pytest.raises(JobCancelledError, match="cancelled by a client"):
        client.result(slow, timeout=60)


def test_errors_are_typed(service_url):
    client = Client(service_url)
    with pytest.raises(ConfigError, match="options: beta"):
        client.attribute("w1 w2", " w3", beta=-1.0)
    with pytest.raises(InputError, match="prompt"):
        client.attribute("", " w3")
    # Token ids the library refuses are refused through the client too, never converted on the way.
    for ids, shown in (([4, True], "element 1 is true"), ([4, 5.0], "element 1 is 5.0"),
                       (torch.tensor([4.0, 5.0]), "element 0 is 4.0"), (np.array([True]), "element 0 is true")):
        with pytest.raises(InputError, match=shown):
            client.attribute(ids, " w3")
    assert client.attribute(np.array([4, 5]), torch.tensor([6])).context_ids == [4, 5]
    assert client.attribute(range(4, 6), [np.int64(6)]).context_ids == [4, 5]  # any sequence, as the library
    for bad in (b"w1 w2", 5, {"ids": [4]}):
        with pytest.raises(InputError, match="prompt must be text or token ids"):
            client.attribute(bad, " w3")
    with pytest.raises(ServiceError, match="404"):
        client.result("no-such-job")
    with pytest.raises(ServiceError, match="cannot reach"):
        Client("http://127.0.0.1:9/", timeout=2).models()


def test_option_fields_are_config_fields_and_the_schema():
    from heta_fast.service.schema import EngineOptions

    assert set(OPTION_FIELDS) <= set(HETAConfig().to_dict())
    assert set(EngineOptions.model_fields) == set(OPTION_FIELDS)


def test_numpy_options_are_the_numbers_they_hold_as_in_the_library(service_url, attributor):
    """np.int64 / np.float32 options, which HETAConfig takes, reach the service as the Python numbers."""
    options = {"seed": np.int64(11), "beta": np.float32(0.25)}
    base = {"probing_repeats": 1, "probing_patterns": 2}
    _same(Client(service_url).attribute("w1 w2 w3", " w4", **base, **options),
          attributor.attribute("w1 w2 w3", " w4", config=HETAConfig(**base, **options)))
    # What the library refuses is refused here, typed: a NumPy bool, a tensor.
    for name, value in (("use_fisher", np.bool_(True)), ("seed", torch.tensor(3))):
        with pytest.raises(ConfigError):
            HETAConfig(**{name: value})
        with pytest.raises(ConfigError, match=f"options: {name} cannot be sent"):
            Client(service_url).submit("w1 w2", " w3", **{name: value})


@pytest.mark.parametrize("url, message", [
    ("localhost", "url must be an http:// or https:// address"),
    ("127.0.0.1:8000", "url must be an http:// or https:// address"),
    ("ftp://127.0.0.1/", "url must be an http:// or https:// address"),
    ("http://127.0.0.1:8000/?q=", "no query"),
    ("http://[::1/", "is malformed: Invalid IPv6 URL"),
    ("http://127.0.0.1:99999/", "is malformed: Port out of range"),
    (None, "url must be text"),
])
def test_a_malformed_address_is_a_config_error(url, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Client(url)


@pytest.fixture()
def not_the_service():
    """A local HTTP server answering 200 to any GET with the body of ``ANSWERS[path]``."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            body = ANSWERS.get(self.path.split("?")[0], b"<html>a page</html>")  # ?wait=... aside
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


ANSWERS = {"/json/v1/models": b'["a", "list"]', "/binary/v1/models": b"\xff\xfe\x00"}


@pytest.mark.parametrize("base", ["", "json/", "binary/"])
def test_an_answer_that_is_not_a_json_object_is_a_service_error(not_the_service, base):
    url = not_the_service + base
    with pytest.raises(ServiceError, match=re.escape(f"{url}v1/models: the answer is not a JSON object")):
        Client(url).models()


ANSWERS.update({"/other/v1/models": b'{"data": []}', "/other/v1/attributions/j1": b'{"detail": "hello"}',
                "/done/v1/attributions/j1": b'{"id": "j1", "status": "done"}',
                "/odd/v1/attributions/j1": b'{"id": "j1", "status": "failed", "error": "boom"}'})


@pytest.mark.parametrize("base,call,message", [
    ("other/", lambda c: c.models(), "v1/models: the answer has no 'models'"),
    ("other/", lambda c: c.status("j1"), "v1/attributions/j1: the answer has no 'id'"),
    ("done/", lambda c: c.result("j1"), "job j1 is done but its answer holds no result"),
    ("odd/", lambda c: c.result("j1"), "ServiceError: failed"),
])
def test_a_json_answer_without_what_the_service_sends_is_a_service_error(not_the_service, base, call, message):
    """Another JSON service at the address (or a damaged answer): a ServiceError, not a KeyError."""
    with pytest.raises(ServiceError, match=re.escape(message)):
        call(Client(not_the_service + base))
