"""Llama 3.x: the llama3 rope scaling changes the rotary tables only; the Llama map reads it."""
import torch

from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.tiny_models import tiny_model


def test_llama3_rope_scaling_is_in_force():
    scaled, plain = tiny_model("llama3"), tiny_model("llama3", rope_parameters={"rope_type": "default",
                                                                               "rope_theta": 500000.0})
    assert scaled.model.rotary_emb.rope_type == "llama3"
    assert not torch.equal(scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq)


def test_llama3_rebuilds_attention():
    assert assert_rebuilds(tiny_model("llama3")).spec.name == "llama"


def test_llama3_engine_equals_reference():
    assert_engine_matches_reference("llama3")


def test_dynamic_rope_engine_equals_reference():
    """Dynamic NTK updates its frequencies in the forward, as longrope does (test_phi3.py): the
    curvature's transformed forward runs with them settled (heta_fast.model.rotary)."""
    from heta_fast.model.rotary import updating_rotaries

    dynamic = dict(rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0})
    assert updating_rotaries(tiny_model("llama", **dynamic))
    assert_engine_matches_reference("llama", **dynamic)
    assert_engine_matches_reference("llama", tol=1e-6, **dynamic, max_position_embeddings=7)
