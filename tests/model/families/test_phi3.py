"""Phi-3 / Phi-3.5 / Phi-4 (model_type phi3): fused qkv_proj; Phi-4-mini rotates part of each head
(partial_rotary_factor 0.75) and ties its embeddings."""
from heta_fast.model.adapter import ModelAdapter
from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.tiny_models import tiny_model

PHI4_MINI = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                 tie_word_embeddings=True)


def test_phi4_mini_layout_rebuilds_attention():
    model = tiny_model("phi3", **PHI4_MINI)
    assert model.model.rotary_emb.inv_freq.numel() == 1  # 2 of 4 head dimensions rotate
    assert assert_rebuilds(model).spec.name == "phi3"
    assert ModelAdapter(tiny_model("phi3")).spec.name == "phi3"


def test_phi4_mini_layout_engine_equals_reference():
    assert_engine_matches_reference("phi3", **PHI4_MINI)
