"""The generic path: a family with no module map of its own is read through a map discovered
from the known projection layouts and accepted only after it verifies itself; a broken map
(discovered or the user's) is refused naming the architecture, the layer and the quantity."""
from dataclasses import replace

import pytest
import torch

import heta_fast.model.architectures.verify as verify_module
from heta_fast import Attributor, HETAConfig
from heta_fast.errors import UnsupportedArchitectureError
from heta_fast.model import register_architecture
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.architectures import _BY_MODEL_TYPE, spec_for_config
from heta_fast.model.architectures.base import split_heads
from heta_fast.reference import attribute_reference
from tests.model.families.checks import PROMPT, TARGET, assert_rebuilds
from tests.tiny_models import generic_model, tiny_model, tiny_tokenizer, unsupported_model


def test_a_family_without_a_map_is_read_through_the_generic_path():
    model = generic_model()
    assert "opt" not in _BY_MODEL_TYPE
    adapter = assert_rebuilds(model)
    assert adapter.spec.name == "generic (separate q/k/v projections, output out_proj)" and not adapter.builtin
    assert adapter.layers[1] is model.model.decoder.layers[1]


def test_the_generic_path_gives_the_reference_numbers():
    attr = Attributor(generic_model(), tiny_tokenizer(), HETAConfig(num_probes=2, estimator="exact", max_batch=4))
    res = attr.attribute(PROMPT, TARGET)
    n_ctx = len(res.context_ids)
    x = attr.adapter.embed(torch.tensor(res.context_ids + res.target_ids[:-1]))
    ref = attribute_reference(attr.adapter, x, torch.arange(2) + n_ctx - 1, torch.tensor(res.target_ids), n_ctx,
                              torch.zeros(n_ctx, 16, dtype=x.dtype), num_probes=2, seed=0)
    for name in ("flow", "curvature", "information"):
        torch.testing.assert_close(getattr(res, name), ref[name], rtol=1e-6, atol=1e-9)


def test_the_verdict_is_cached_per_architecture_and_config(monkeypatch):
    ModelAdapter(generic_model())
    def verify_again(adapter, spec):
        raise RuntimeError("verified again")

    monkeypatch.setattr(verify_module, "verify", verify_again)
    ModelAdapter(generic_model())  # same config: no second verification
    with pytest.raises(RuntimeError, match="verified again"):
        ModelAdapter(generic_model(dtype=torch.float32))  # another dtype is another verdict


def _keys_as_values(attn, layout, x):
    """A deliberately wrong value map: the key projection."""
    return split_heads(attn.k_proj(x), layout.num_kv_heads, layout.head_dim)


def test_a_broken_user_map_is_refused_naming_layer_and_quantity():
    model = tiny_model("llama")
    broken = replace(spec_for_config(model.config), name="broken", values=_keys_as_values)
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"'llama', module map 'broken': layer 0: the attention output rebuilt .* does not match"
                             r".*register_architecture"):
        ModelAdapter(model, broken)
    assert model.config._attn_implementation == "eager"  # a refused model is given back as it was


def test_a_registered_user_map_is_verified_too():
    model = tiny_model("llama")
    model.config.model_type = "my-broken-llama"
    spec = replace(spec_for_config(tiny_model("llama").config), name="mine", model_types=("my-broken-llama",),
                   values=_keys_as_values)
    try:
        register_architecture(spec)
        with pytest.raises(UnsupportedArchitectureError, match="module map 'mine': layer 0"):
            ModelAdapter(model)
    finally:
        _BY_MODEL_TYPE.pop("my-broken-llama", None)


def test_head_counts_must_match_the_config():
    model = tiny_model("llama")
    model.config.model_type = "llama-with-wrong-config"
    model.config.num_key_value_heads = 4  # the model has 2
    with pytest.raises(UnsupportedArchitectureError, match=r"layer 0: key/value heads does not match .* 2, .* 4"):
        ModelAdapter(model)


def test_a_map_missing_a_post_attention_norm_is_refused():
    model = tiny_model("olmo2")
    plain = replace(spec_for_config(model.config), name="no-post-norm", post_attention_gain=lambda layer: None)
    with pytest.raises(UnsupportedArchitectureError, match=r"layer 0: the attention output as it reaches the residual"):
        ModelAdapter(model, plain)


def test_a_family_whose_attention_bypasses_the_interface_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match=r"'bloom'.*attention interface.*register_architecture"):
        ModelAdapter(unsupported_model())


def test_a_layer_whose_mlp_cannot_be_found_is_refused(monkeypatch):
    monkeypatch.setattr(verify_module, "_MLP_NAMES", ("no_such_module",))
    model = tiny_model("llama")
    mine = replace(spec_for_config(model.config), name="mine")
    with pytest.raises(UnsupportedArchitectureError, match=r"layer 0: the MLP .*no_such_module.* is not found"):
        ModelAdapter(model, mine)


def _short_opt(positions: int):
    """The generic family (OPT) with learned positions for ``positions`` tokens only."""
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=positions, word_embed_proj_dim=16, bos_token_id=2, eos_token_id=3,
                    pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").double().eval()


def test_a_model_with_fewer_positions_than_the_verification_tokens_verifies_on_what_it_allows():
    adapter = ModelAdapter(_short_opt(8))
    assert adapter.spec.name.startswith("generic") and verify_module.token_count(adapter) == 8
    res = Attributor(_short_opt(8), tiny_tokenizer(), HETAConfig(num_probes=2)).attribute(PROMPT, TARGET)
    assert float(res.flow.sum()) > 0


def test_a_model_allowing_a_single_position_is_refused_clearly():
    with pytest.raises(UnsupportedArchitectureError, match="number of positions the model allows is too small"):
        ModelAdapter(_short_opt(1))
