"""Qwen3: per-head q/k RMSNorm before rotary, recorded as the attention function receives it."""
from tests.model.families.checks import assert_engine_matches_reference, assert_heads, assert_rebuilds
from tests.tiny_models import tiny_model


def test_qwen3_has_qk_norms_and_rebuilds_attention():
    model = tiny_model("qwen3")
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (4,) and attn.k_norm.weight.shape == (4,)  # per head (head_dim 4)
    assert assert_rebuilds(model).spec.name == "qwen3"
    assert_heads("qwen3")


def test_qwen3_engine_equals_reference():
    assert_engine_matches_reference("qwen3")
