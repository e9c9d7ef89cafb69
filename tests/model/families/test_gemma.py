"""Gemma: embeddings scaled by sqrt(d_model) inside the embedding module, so the input
embeddings heta perturbs (and masks) are the scaled rows the first decoder layer receives."""
import torch

from heta_fast.model.adapter import ModelAdapter
from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.tiny_models import tiny_model


def test_gemma_input_embeddings_are_the_scaled_rows_the_model_runs_on():
    model = tiny_model("gemma")
    adapter = ModelAdapter(model)
    ids = torch.arange(4, 11)
    x = adapter.embed(ids)
    torch.testing.assert_close(x, model.model.embed_tokens.weight[ids] * 16 ** 0.5)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=x[None]).logits, model(input_ids=ids[None]).logits,
                                   rtol=0, atol=0)


def test_gemma_rebuilds_attention():
    assert assert_rebuilds(tiny_model("gemma")).spec.name == "gemma"


def test_gemma_engine_equals_reference():
    assert_engine_matches_reference("gemma")
