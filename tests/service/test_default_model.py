"""End to end on the default model: ``heta-fast serve smollm2-135m`` as a real process; one Client
request gives the same Attribution (every number) as the in-process Attributor."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.client import Client
from tests.service.helpers import running_service

PROMPT, TARGET = "The capital of France is", " Paris"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
# All three components; a small probing budget (what is compared is service against in-process).
CONFIG = HETAConfig(seed=3, probing_repeats=1, probing_patterns=4)


@pytest.mark.real_model
def test_default_model_through_the_service_equals_in_process(default_attributor, tmp_path):
    chat_config = CONFIG.replace(components=("flow", "information"))
    with ThreadPoolExecutor(1) as pool:  # the in-process results are computed while the service starts
        expected = pool.submit(default_attributor.attribute, PROMPT, TARGET, config=CONFIG)
        expected_chat = pool.submit(default_attributor.attribute, messages=MESSAGES, target=" Paris",
                                    config=chat_config)
        with running_service("smollm2-135m", cwd=tmp_path) as (url, _):
            client = Client(url)
            assert client.models()[0]["model_type"] == "llama"
            got = client.attribute(PROMPT, TARGET, config=CONFIG, timeout=300)
            chat = client.attribute(messages=MESSAGES, target=" Paris", config=chat_config, timeout=300)
        want, want_chat = expected.result(), expected_chat.result()
    # A chat request: rendered by the engine's template rule, marks and numbers as in-process.
    assert (chat.segments, chat.special, chat.attributed, chat.messages) == (
        want_chat.segments, want_chat.special, want_chat.attributed, want_chat.messages)
    assert torch.equal(chat.scores, want_chat.scores.double()) and chat.segments.count(0) == 7
    assert got.context_tokens == want.context_tokens and got.model_dtype == want.model_dtype
    assert got.curvature is not None and got.information is not None
    for name in ("scores", "flow", "curvature", "information"):
        assert torch.equal(getattr(got, name), getattr(want, name).double()), name
    assert got.topk(1) == want.topk(1)
