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
