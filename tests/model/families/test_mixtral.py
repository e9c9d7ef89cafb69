"""Mixtral: Mistral attention (sliding window) and a mixture-of-experts MLP."""
import torch

from heta_fast.model.adapter import ModelAdapter
from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.model.families.moe import assert_hvp_is_the_active_branchs
from tests.tiny_models import tiny_model


def test_mixtral_window_and_rebuild():
    adapter = assert_rebuilds(tiny_model("mixtral"))
    assert adapter.spec.name == "mixtral" and [adapter.window(i) for i in range(2)] == [4, 4]
    a = adapter.capture_matrices(adapter.embed(torch.arange(4, 12))).attentions[0]
    assert float(a[:, 7, :4].abs().max()) == 0 and bool((a[:, 7, 4:] > 0).all())


def test_mixtral_experts_run_the_plain_loop_while_held_and_are_given_back():
    model = tiny_model("mixtral")
    before = model.config._experts_implementation
    adapter = ModelAdapter(model)
    assert model.config._experts_implementation == "eager"
    adapter.restore()
    assert model.config._experts_implementation == before


def test_mixtral_curvature_is_the_active_branchs_hessian():
    assert_hvp_is_the_active_branchs("mixtral")


def test_mixtral_engine_equals_reference():
    assert_engine_matches_reference("mixtral")
