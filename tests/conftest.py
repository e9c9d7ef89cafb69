"""Shared pytest configuration.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when the
kernel module is first imported, so the variable is set here, before any test
module can import triton.  On a machine with a GPU the kernels run natively.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "interpreter: Triton kernels run under TRITON_INTERPRET=1 on CPU"
    )


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with the tiny word-level tokenizer, saved as a model folder."""
    from tests.tiny_models import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", dtype=torch.float32).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def default_attributor():
    """The default model (smollm2-135m) with few probes: fetched and converted once, then cached."""
    from heta_fast import Attributor, HETAConfig

    return Attributor.from_pretrained("smollm2-135m", config=HETAConfig(num_probes=2))
