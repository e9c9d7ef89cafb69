"""The information term's span estimate (information_estimator="span") against its definition,
written independently in the reference (layer hooks freezing rows, not packed attention), its
limit (the exact term once the span covers the input) and its cost, counted exactly."""
import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.errors import ConfigError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import information_reference, information_span_reference
from heta_fast.signals.information import information
from heta_fast.signals.information.masked_batches import MaskedBatch, plan_batches
from tests.tiny_models import ARCHITECTURES, tiny_model, tiny_tokenizer

IDS = torch.tensor([2, 10, 33, 5, 41, 7, 19, 28, 12, 9, 50, 21, 3, 44, 17, 30])
TIGHT = dict(rtol=1e-7, atol=1e-10)


def _setup(arch="llama", n_ctx=13, n_targets=3):
    adapter = ModelAdapter(tiny_model(arch))
    x = adapter.embed(IDS[: n_ctx + n_targets - 1])
    positions = torch.arange(n_targets) + n_ctx - 1
    orig = adapter.log_probs(x[None], positions)[0]
    return adapter, x, positions, orig, torch.zeros(n_ctx, x.shape[-1], dtype=x.dtype)


def _span(span, **fields):
    return HETAConfig(information_estimator="span", information_span=span, **fields)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_span_estimate_is_its_definition_for_every_architecture(arch):
    adapter, x, positions, orig, masks = _setup(arch)
    expected = information_span_reference(adapter, x, positions, 13, masks, span=2)
    got = information(adapter, x, positions, 13, masks, orig, _span(2))
    torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("span", [1, 3, 5])
@pytest.mark.parametrize("max_batch", [1, 4, 32])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_any_span_batch_size_and_target_count(span, max_batch, n_targets):
    adapter, x, positions, orig, masks = _setup("llama", n_targets=n_targets)
    expected = information_span_reference(adapter, x, positions, 13, masks, span=span)
    got = information(adapter, x, positions, 13, masks, orig, _span(span, max_batch=max_batch))
    torch.testing.assert_close(got, expected, **TIGHT)


def test_the_estimate_differs_from_the_exact_term_until_the_span_covers_the_input():
    # A short span leaves out paths through the unrecomputed rows (a real approximation, not the
    # exact term renamed); a span as long as the input recomputes everything and is the exact term.
    adapter, x, positions, orig, masks = _setup("llama", n_targets=1)
    exact = information_reference(adapter, x, positions, 13, masks)
    short = information(adapter, x, positions, 13, masks, orig, _span(1))
    assert (short - exact).abs().max() > 1e-4 * exact.abs().max()
    for span in (6, 13, 100):  # 6 + 6 >= 12: every row of every variant recomputed
        torch.testing.assert_close(information(adapter, x, positions, 13, masks, orig, _span(span)), exact, **TIGHT)


def test_the_cost_is_the_recomputed_rows_counted_exactly():
    adapter, x, positions, orig, masks = _setup("llama", n_targets=3)
    n, first_target, span = int(positions.max()) + 1, int(positions.min()), 2  # passes run up to the last target
    resume = first_target - span
    expected = sum(min(n - i, span + n - resume) for i in range(13))
    stats, exact_stats = {}, {}
    information(adapter, x, positions, 13, masks, orig, _span(span), stats=stats)
    information(adapter, x, positions, 13, masks, orig, HETAConfig(), stats=exact_stats)
    assert stats["masked_positions"] == expected
    assert exact_stats["masked_positions"] == sum(n - i for i in range(13))
    assert stats["masked_positions"] < exact_stats["masked_positions"]


def test_a_batch_counts_its_rows_as_the_packing_lays_them_out():
    # MaskedBatch's arithmetic (which the memory model and the planner use) against the rows
    # themselves; rows from the gap's end on do not jump.
    batch = MaskedBatch(0, 2, 6, 14, span=3, resume=9)
    lengths = [batch.row(r)[1] for r in range(6)]
    assert lengths == [3 + 16 - 9, 3 + 16 - 9, 3 + 16 - 9, 3 + 16 - 9, 16 - 6, 16 - 7]
    assert batch.positions == sum(lengths) and batch.jumps and batch.prefix == 9
    assert not MaskedBatch(0, 7, 2, 9, span=3, resume=9).jumps
    batches = plan_batches([(0, 13, 16)], 4, lambda b: True, str, layout="packed", span=3, resumes=[9])
    assert [(b.start, b.rows) for b in batches] == [(0, 4), (4, 4), (8, 4), (12, 1)]
    with pytest.raises(ValueError, match="packed"):
        plan_batches([(0, 13, 16)], 4, lambda b: True, str, layout="rectangular", span=3, resumes=[9])


def test_windows_compose_with_the_span():
    # Each window's variants recompute `span` rows after the mask and before the window's first
    # target; a span covering the window is the windowed exact term.
    adapter, x, positions, orig, masks = _setup("mistral", n_targets=1)
    windowed = dict(window_size=6, window_overlap=0.5)
    exact = information(adapter, x, positions, 13, masks, orig, HETAConfig(**windowed))
    covered = information(adapter, x, positions, 13, masks, orig, _span(13, **windowed))
    short = information(adapter, x, positions, 13, masks, orig, _span(1, **windowed))
    torch.testing.assert_close(covered, exact, **TIGHT)
    assert not torch.allclose(short, exact)


def test_a_layout_that_cannot_pack_is_refused_before_any_work():
    adapter, x, positions, orig, masks = _setup("llama")
    with pytest.raises(ConfigError, match="span"):
        information(adapter, x, positions, 13, masks, orig, _span(2), layout="rectangular")


def test_the_engine_and_a_batch_of_requests_give_the_estimate():
    # Through Attributor (one request and several, which the scheduler may group): the engine's
    # information term under the span config is the reference's span estimate of that input.
    attributor = Attributor(tiny_model("qwen2"), tiny_tokenizer())
    config = HETAConfig(components=("information",), information_estimator="span", information_span=2)
    prompts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "w11 w12 w13 w14 w15 w16 w17"]
    alone = [attributor.attribute(p, " w20 w21", config=config) for p in prompts]
    together = list(attributor.attribute_many([(p, " w20 w21") for p in prompts], config=config))
    for one, many in zip(alone, together):
        torch.testing.assert_close(many.information, one.information, **TIGHT)
    adapter = attributor.adapter
    ids = torch.tensor(list(alone[0].context_ids) + list(alone[0].target_ids)[:-1])
    x = adapter.embed(ids)
    n_ctx = len(alone[0].context_ids)
    positions = torch.arange(2) + n_ctx - 1
    expected = information_span_reference(adapter, x, positions, n_ctx, torch.zeros(n_ctx, x.shape[-1],
                                                                                     dtype=x.dtype), span=2)
    torch.testing.assert_close(alone[0].information.to(expected.dtype), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_information_span_is_validated(bad):
    with pytest.raises(ConfigError, match="information_span"):
        HETAConfig(information_estimator="span", information_span=bad)
