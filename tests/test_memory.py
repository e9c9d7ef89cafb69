"""The memory model: probes per batched HVP pass under the memory budget, and its messages."""
import pytest

from heta_fast.errors import MemoryBudgetError
from heta_fast.memory import ModelShape, mib, probes_per_pass
from tests.tiny_models import tiny_model


def test_the_shape_is_read_from_the_config():
    shape = ModelShape.of(tiny_model("llama"))  # float64, GQA 4 query / 2 KV heads
    assert (shape.layers, shape.d_model, shape.d_ff, shape.num_heads, shape.num_kv_heads, shape.head_dim,
            shape.vocab, shape.itemsize) == (2, 16, 32, 4, 2, 4, 64, 8)
    gpt2 = ModelShape.of(tiny_model("gpt2"))  # n_inner unset: 4 d_model
    assert gpt2.d_ff == 64 and gpt2.num_kv_heads == gpt2.num_heads == 4


def test_budget_bounds_the_batch_and_max_batch_caps_it():
    shape = ModelShape.of(tiny_model("llama"))
    one = shape.probe_bytes(10, 2)
    # n · layers · (16 d_model + 6 d_ff + 2 heads · n) · itemsize, counted by hand.
    assert one == 10 * 2 * (16 * 16 + 6 * 32 + 2 * 4 * 10) * 8
    assert probes_per_pass(shape, 10, 2, 5 * one + 1, max_batch=32) == 5
    assert probes_per_pass(shape, 10, 2, 100 * one, max_batch=32) == 32
    assert shape.probe_bytes(20, 2) > 2 * one  # attention scores grow as n²


def test_a_budget_below_one_probe_is_a_typed_error():
    with pytest.raises(MemoryBudgetError, match="memory_budget=1000 bytes"):
        probes_per_pass(ModelShape.of(tiny_model("gpt2")), 10, 2, 1000, max_batch=8)


def test_sizes_in_messages_never_round_to_zero():
    assert mib(0) == "0 bytes" and mib(1000) == "1000 bytes" and mib(4096) == "4 KiB" and mib(3 * 2**20) == "3 MiB"
