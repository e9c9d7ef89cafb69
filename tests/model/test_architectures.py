"""Every adapter against the model's own attention: the captured probabilities, values and
per-head output projections must rebuild the attention module's output exactly, which pins
down the value slice, the bias, the W_O orientation and the GQA head mapping."""
import pytest
import torch

from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.architectures import spec_for_config, supported_model_types
from tests.model.families.checks import assert_rebuilds
from tests.tiny_models import ARCHITECTURES, tiny_model, unsupported_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_capture_rebuilds_attention_output(arch):
    assert_rebuilds(tiny_model(arch))


def test_gqa_head_counts_are_read_from_config():
    adapter = ModelAdapter(tiny_model("llama"))
    assert (adapter.layout.num_heads, adapter.layout.num_kv_heads, adapter.layout.head_dim) == (4, 2, 4)
    assert [adapter.layout.kv_head_of(h) for h in range(4)] == [0, 0, 1, 1]


def test_phi3_fused_qkv_value_slice_matches_manual_split():
    model = tiny_model("phi3")
    adapter = ModelAdapter(model)
    attn = adapter.spec.attention(adapter.layers[0])
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    w = attn.qkv_proj.weight  # rows: 4 query heads, 2 key heads, 2 value heads, 4 dims each
    manual = (x @ w[24:32].t()).reshape(1, 5, 2, 4)
    torch.testing.assert_close(adapter.spec.values(attn, adapter.layout, x), manual)


def test_gpt2_conv1d_value_slice_includes_bias():
    model = tiny_model("gpt2")
    adapter = ModelAdapter(model)
    attn = adapter.spec.attention(adapter.layers[1])
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    manual = (x @ attn.c_attn.weight[:, 32:48] + attn.c_attn.bias[32:48]).reshape(1, 3, 4, 4)
    torch.testing.assert_close(adapter.spec.values(attn, adapter.layout, x), manual)


def test_mistral_sliding_window_is_reported_and_applied():
    adapter = ModelAdapter(tiny_model("mistral"))
    assert adapter.spec.window(adapter.model.config, 0) == 3
    cap = adapter.capture_matrices(adapter.embed(torch.arange(8)))
    a = cap.attentions[0]
    j, i = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    outside = (i > j) | (i <= j - 3)
    assert torch.all(a[:, outside] == 0)
    assert torch.all(a[:, ~outside] > 0)


def test_unknown_architecture_raises_naming_it_and_how_to_add():
    with pytest.raises(UnsupportedArchitectureError, match=r"'bloom'.*attention interface.*register_architecture"):
        ModelAdapter(unsupported_model())


def test_a_registered_architecture_is_used_without_editing_the_package():
    from dataclasses import replace

    from heta_fast.model import register_architecture
    from heta_fast.model.architectures import _BY_MODEL_TYPE

    model = tiny_model("llama")
    model.config.model_type = "my-llama"  # a family heta-fast does not know: the generic path reads it
    assert ModelAdapter(model).spec.name.startswith("generic")
    spec = replace(spec_for_config(tiny_model("llama").config), name="my-llama", model_types=("my-llama",))
    try:
        register_architecture(spec)
        adapter = ModelAdapter(model)
        assert adapter.spec is spec and len(adapter.layers) == 2
        with pytest.raises(ValueError, match="already have a module map"):
            register_architecture(replace(spec, name="other"))
        register_architecture(replace(spec, name="other"), replace=True)
        assert spec_for_config(model.config).name == "other"
    finally:
        _BY_MODEL_TYPE.pop("my-llama", None)


def test_supported_types_cover_the_required_families():
    assert {"llama", "mistral", "qwen2", "gpt2", "gptj", "phi3", "mixtral", "qwen3", "qwen3_moe", "smollm3",
            "granite", "olmo2", "gpt_neox", "gemma", "gemma2", "gemma3_text", "gemma3"} <= set(supported_model_types())
    assert spec_for_config(tiny_model("qwen2").config).name == "qwen2"


@pytest.mark.parametrize("change, match", [
    ({"model_types": "opt"}, "model_types must be a non-empty tuple or list"),
    ({"model_types": ()}, "model_types must be"),
    ({"model_types": ("opt", "")}, "model_types must be"),
    ({"model_types": ("opt", 3)}, "model_types must be"),
    ({"name": ""}, "name must be a non-empty string"),
    ({"name": None}, "name must be a non-empty string"),
    ({"values": "v_proj"}, "values must be callable"),
])
def test_a_malformed_map_is_refused_when_built(change, match):
    from dataclasses import replace

    from heta_fast.errors import ConfigError
    from heta_fast.model import ArchitectureSpec
    from heta_fast.model.architectures import _BY_MODEL_TYPE, llama

    before = dict(_BY_MODEL_TYPE)
    with pytest.raises(ConfigError, match=match):
        replace(llama.SPEC, **change)
    fields = {f: getattr(llama.SPEC, f) for f in ("name", "model_types", "layers", "attention", "values", "out_proj")}
    with pytest.raises(ConfigError, match=match):
        ArchitectureSpec(**{**fields, **change})
    assert _BY_MODEL_TYPE == before  # nothing registered, no letter of "opt" among the model types


def test_register_architecture_takes_a_map_and_a_list_of_types():
    from dataclasses import replace

    from heta_fast.errors import ConfigError
    from heta_fast.model import register_architecture
    from heta_fast.model.architectures import _BY_MODEL_TYPE, llama

    with pytest.raises(ConfigError, match="takes an ArchitectureSpec, got dict"):
        register_architecture({"name": "x"})
    spec = replace(llama.SPEC, name="listed", model_types=["my-a", "my-b"])
    assert spec.model_types == ("my-a", "my-b")
    try:
        register_architecture(spec)
        assert _BY_MODEL_TYPE["my-a"] is spec and "m" not in _BY_MODEL_TYPE
    finally:
        _BY_MODEL_TYPE.pop("my-a", None)
        _BY_MODEL_TYPE.pop("my-b", None)
