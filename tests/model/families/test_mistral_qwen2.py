"""Mistral (sliding window) and Qwen2/2.5 (q/k/v biases) share the Llama map; their engine-vs-
reference runs are in tests/test_engine.py (ARCHITECTURES), the family specifics here."""
import torch

from heta_fast.model.capture import CaptureRequest
from tests.model.families.checks import assert_rebuilds
from tests.tiny_models import tiny_model


def test_mistral_window_is_the_capture_and_the_modules():
    adapter = assert_rebuilds(tiny_model("mistral"))
    cap = adapter.capture(adapter.embed(torch.arange(4, 12)), torch.tensor([7]), CaptureRequest(attention=True))
    assert cap.windows == [3, 3] and adapter.layers[0].self_attn.config.sliding_window == 3


def test_qwen2_value_bias_is_read():
    model = tiny_model("qwen2")
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None
    adapter = assert_rebuilds(model)
    x = torch.zeros(1, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(adapter.spec.values(attn, adapter.layout, x)[0, 0].reshape(-1), attn.v_proj.bias)
