"""End to end on the default model: `serve --model smollm2-135m`, one request through the Client,
the same numbers as the in-process Attributor."""
from __future__ import annotations

import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.client import Client
from tests.service.helpers import running_service

PROMPT, TARGET = "The capital of France is", " Paris"


@pytest.mark.real_model
def test_default_model_through_the_service_equals_in_process(default_attributor, tmp_path):
    config = HETAConfig(seed=3)
    want = default_attributor.attribute(PROMPT, TARGET, config=config)
    with running_service("smollm2-135m", cwd=tmp_path) as (url, _):
        client = Client(url)
        assert client.models()[0]["model_type"] == "llama"
        got = client.attribute(PROMPT, TARGET, config=config, timeout=300)
    assert got.context_tokens == want.context_tokens and got.model_dtype == want.model_dtype
    for name in ("scores", "flow", "curvature", "information"):
        assert torch.equal(getattr(got, name), getattr(want, name).double()), name
    assert got.topk(1) == want.topk(1)
