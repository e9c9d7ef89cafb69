"""Rotary frequencies settled for a block (heta_fast.model.rotary): transformers' own update run
once outside the block, none inside it (torch.func forbids longrope's in-place write)."""
import torch
from torch.func import grad

from heta_fast.model.rotary import settled_rotary, updating_rotaries
from tests.model.families.test_phi3 import longrope
from tests.tiny_models import tiny_model


def _log_prob(model):
    return lambda x: torch.log_softmax(model(inputs_embeds=x[None]).logits[0, -1], -1)[7]


def test_a_transform_runs_inside_the_block_and_the_module_is_restored_after():
    model = tiny_model("phi3", **longrope(4))
    (rotary, _), = updating_rotaries(model)
    x = model.get_input_embeddings()(torch.arange(4, 10)).detach()
    with settled_rotary(model, 6):
        assert "forward" in vars(rotary)
        g = grad(_log_prob(model))(x)
    assert "forward" not in vars(rotary)
    # The same gradient as plain autograd through the model's own (updating) forward.
    x.requires_grad_(True)
    (want,) = torch.autograd.grad(_log_prob(model)(x), x)
    torch.testing.assert_close(g, want)


def test_a_model_whose_frequencies_never_change_is_left_alone():
    model = tiny_model("llama")
    assert updating_rotaries(model) == []
    with settled_rotary(model, 6):
        assert "forward" not in vars(model.model.rotary_emb)
