"""OLMo-2: RMSNorms after attention and MLP instead of before; q/k norms over the whole projection."""
from tests.model.families.checks import (
    assert_engine_matches_reference,
    assert_post_norm_linearisation,
    assert_rebuilds,
)
from tests.tiny_models import tiny_model


def test_olmo2_qk_norms_cover_the_whole_projection_and_attention_rebuilds():
    model = tiny_model("olmo2")
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (16,) and attn.k_norm.weight.shape == (8,)  # H·dh and Hkv·dh
    assert assert_rebuilds(model).spec.name == "olmo2"


def test_olmo2_gate_takes_the_post_attention_norm_gain():
    assert_post_norm_linearisation("olmo2", lambda layer: layer.post_attention_layernorm.weight)


def test_olmo2_engine_equals_reference():
    assert_engine_matches_reference("olmo2")
