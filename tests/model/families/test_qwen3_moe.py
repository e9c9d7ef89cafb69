"""Qwen3-MoE: Qwen3 attention (per-head q/k norms) and mixture-of-experts MLPs in every layer."""
from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.model.families.moe import assert_hvp_is_the_active_branchs
from tests.tiny_models import tiny_model


def test_qwen3_moe_rebuilds_attention():
    model = tiny_model("qwen3_moe")
    assert all(hasattr(layer.mlp, "experts") for layer in model.model.layers)
    assert assert_rebuilds(model).spec.name == "qwen3_moe"


def test_qwen3_moe_curvature_is_the_active_branchs_hessian():
    assert_hvp_is_the_active_branchs("qwen3_moe")


def test_qwen3_moe_engine_equals_reference():
    assert_engine_matches_reference("qwen3_moe")
