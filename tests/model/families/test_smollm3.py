"""SmolLM3: layers without rotary (``no_rope_layers``); the capture records q and k as the
attention function receives them, rotated or not."""
import torch

from heta_fast.model.capture import CaptureRequest
from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.tiny_models import tiny_model


def test_smollm3_layer_without_rotary_records_unrotated_keys():
    adapter = assert_rebuilds(tiny_model("smollm3"))
    layers = adapter.layers
    assert layers[0].self_attn.use_rope and not layers[1].self_attn.use_rope
    x = adapter.embed(torch.arange(4, 12))
    inputs = {}
    hooks = [layer.self_attn.register_forward_pre_hook(
        lambda mod, args, kwargs, i=i: inputs.__setitem__(i, kwargs["hidden_states"]), with_kwargs=True)
        for i, layer in enumerate(layers)]
    try:
        cap = adapter.capture(x, torch.tensor([7]), CaptureRequest(attention=True))
    finally:
        for h in hooks:
            h.remove()
    for i, rotated in ((0, True), (1, False)):
        plain_k = layers[i].self_attn.k_proj(inputs[i])[0].reshape(8, 2, 4).transpose(0, 1)
        assert torch.allclose(cap.layers[i].k, plain_k, rtol=1e-12, atol=1e-12) != rotated


def test_smollm3_engine_equals_reference():
    assert_engine_matches_reference("smollm3")
