"""heta_fast.client.Client against a running service: the same numbers as in-process, typed errors."""
from __future__ import annotations

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
