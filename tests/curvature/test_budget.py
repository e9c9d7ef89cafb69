"""Probes per batched pass under the memory budget."""
import pytest

from heta_fast.curvature.budget import bytes_per_probe, probes_per_pass
from heta_fast.errors import MemoryBudgetError
from tests.tiny_models import tiny_model


def test_budget_bounds_the_batch_and_max_batch_caps_it():
    model = tiny_model("llama")
    one = bytes_per_probe(10, 2, 16, 32, 4, 8)
    assert probes_per_pass(model, 10, 2, 5 * one + 1, max_batch=32) == 5
    assert probes_per_pass(model, 10, 2, 100 * one, max_batch=32) == 32
    assert bytes_per_probe(20, 2, 16, 32, 4, 8) > 2 * one  # attention scores grow as n²


def test_a_budget_below_one_probe_is_a_typed_error():
    with pytest.raises(MemoryBudgetError, match="memory_budget"):
        probes_per_pass(tiny_model("gpt2"), 10, 2, 1000, max_batch=8)
