"""Sliding windows: a map's window is what the family's attention does, and a window the modules
contradict is refused, never used (a wrong window changes the flow gate and the information term
while the model's logits stay the same)."""
from dataclasses import replace

import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.architectures import llama, spec_for_config
from tests.model.families.checks import PROMPT, TARGET
from tests.tiny_models import tiny_model, tiny_tokenizer

# PROMPT + TARGET run 7 tokens: a window of 3 would hide keys.
STRAY = 3


def _attribute(model):
    return Attributor(model, tiny_tokenizer(), HETAConfig(num_probes=2, estimator="exact")).attribute(PROMPT, TARGET)


def test_a_window_key_llama_ignores_changes_no_number():
    with_key = tiny_model("llama", sliding_window=STRAY)
    with torch.no_grad():
        ids = torch.arange(4, 13)[None]
        assert torch.equal(with_key(ids).logits, tiny_model("llama")(ids).logits)  # the model ignores it
    got, want = _attribute(with_key), _attribute(tiny_model("llama"))
    for name in ("flow", "curvature", "information", "scores"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("arch", ["llama", "granite", "olmo2", "gemma"])
def test_families_whose_attention_passes_no_window_declare_none(arch):
    adapter = ModelAdapter(tiny_model(arch, sliding_window=STRAY))
    assert [adapter.window(i) for i in range(len(adapter.layers))] == [None, None]
    cap = adapter.capture(adapter.embed(torch.arange(4, 13)), torch.tensor([8]), _attention())
    assert cap.windows == [None, None]


@pytest.mark.parametrize("arch, windows", [("mistral", [3, 3]), ("gemma2", [3, None]), ("mixtral", [4, 4])])
def test_families_whose_attention_passes_a_window_declare_it(arch, windows):
    adapter = ModelAdapter(tiny_model(arch))
    assert [adapter.window(i) for i in range(len(adapter.layers))] == windows


def _attention():
    from heta_fast.model.capture import CaptureRequest

    return CaptureRequest(attention=True)


@pytest.mark.parametrize("arch, window, match", [
    # Longer than the 12 verification tokens: the mask shows nothing, the module's call does.
    ("llama", 20, "layer 0: .*applies no sliding window.*declares 20"),
    ("mistral", None, "layer 0: .*applies a sliding window of 3.*declares none"),
    ("mistral", 30, "layer 0: .*applies a sliding window of 3.*declares 30"),
])
def test_a_registered_map_with_a_wrong_window_is_refused_at_verification(arch, window, match):
    model = tiny_model(arch)
    spec = replace(spec_for_config(model.config), name="wrong window", window=lambda config, layer: window)
    with pytest.raises(UnsupportedArchitectureError, match=f"'wrong window'.*{match}"):
        ModelAdapter(model, spec=spec)


def test_a_built_in_map_with_a_wrong_window_is_refused_at_the_first_pass():
    """Built-in maps are not verified at load: the capture, the first pass of every request,
    refuses before any signal runs."""
    adapter = ModelAdapter(tiny_model("llama"))
    adapter.spec = replace(llama.SPEC, window=lambda config, layer: 20)
    with pytest.raises(UnsupportedArchitectureError, match="layer 0: .*declares 20"):
        adapter.capture(adapter.embed(torch.arange(4, 13)), torch.tensor([8]), _attention())


def test_the_generic_path_reads_a_family_that_ignores_its_window_key():
    model = tiny_model("llama", sliding_window=STRAY)
    model.config.model_type = "my-llama"  # no map: the generic path
    adapter = ModelAdapter(model)
    assert adapter.spec.name.endswith("no sliding window)") and adapter.window(0) is None
    got, want = _attribute(model), _attribute(tiny_model("llama"))
    torch.testing.assert_close(got.flow, want.flow)
    torch.testing.assert_close(got.information, want.information)
