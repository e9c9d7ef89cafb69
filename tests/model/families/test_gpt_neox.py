"""GPT-NeoX / Pythia: fused query_key_value interleaved per head, partial rotary, attention and
MLP in parallel, output projection ``dense``."""
import torch

from heta_fast.model.adapter import ModelAdapter
from tests.model.families.checks import assert_engine_matches_reference, assert_heads, assert_rebuilds
from tests.tiny_models import tiny_model


def test_gpt_neox_values_are_the_last_third_of_each_heads_block():
    model = tiny_model("gpt_neox")
    assert model.config.use_parallel_residual and model.gpt_neox.layers[0].attention.rotary_ndims == 2
    adapter = ModelAdapter(model)
    attn = adapter.spec.attention(adapter.layers[0])
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    w, b = attn.query_key_value.weight, attn.query_key_value.bias  # rows: head h owns [12h, 12h + 12): q | k | v
    manual = torch.stack([x @ w[12 * h + 8 : 12 * h + 12].t() + b[12 * h + 8 : 12 * h + 12] for h in range(4)], dim=2)
    torch.testing.assert_close(adapter.spec.values(attn, adapter.layout, x), manual)


def test_gpt_neox_rebuilds_attention():
    assert assert_rebuilds(tiny_model("gpt_neox")).spec.name == "gpt_neox"
    assert_heads("gpt_neox", num_kv_heads=4)


def test_gpt_neox_engine_equals_reference():
    assert_engine_matches_reference("gpt_neox")
