"""The information term of several requests in shared packed passes (issue 13) against each one alone."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.errors import MemoryBudgetError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.capture import CaptureRequest
from heta_fast.signals.information import group as group_module
from heta_fast.signals.information import information
from heta_fast.signals.information import signal as signal_module
from heta_fast.signals.information.group import GroupItem, information_group
from heta_fast.signals.information.masking import mask_vectors
from heta_fast.signals.information.prefix_cache import PrefixCache
from tests.tiny_models import tiny_model, tiny_tokenizer

# (context tokens, target tokens): different lengths, an odd one, several with 2+ targets.
REQUESTS = [(5, 1), (8, 3), (3, 2), (11, 1)]
TIGHT = dict(rtol=1e-7, atol=1e-10)
FLOAT32 = dict(rtol=1e-5, atol=1e-7)  # as the information tests allow for float32 attention


def _items(arch="llama", dtype=torch.float64, requests=REQUESTS, scheme="mean", seed=1):
    """Real inputs per request: the engine's capture gives log P_orig and the prefix cache."""
    adapter = ModelAdapter(tiny_model(arch, dtype))
    gen = torch.Generator().manual_seed(seed)
    items = []
    for n_ctx, n_targets in requests:
        ids = torch.randint(4, 64, (n_ctx + n_targets - 1,), generator=gen)
        x = adapter.embed(ids)
        positions = torch.arange(n_targets) + n_ctx - 1
        capture = adapter.capture(x, positions, CaptureRequest(key_values=True))
        masks = mask_vectors(scheme, x[:n_ctx], adapter.model.get_input_embeddings(), tiny_tokenizer())
        items.append(GroupItem(x, positions, n_ctx, masks, capture.log_probs,
                               PrefixCache.from_kv(capture.kv, n_ctx - 1)))
    return adapter, items


def _alone(adapter, item, config, **options):
    return information(adapter, item.embeds, item.positions, item.n_context, item.mask_vectors, item.orig_log_probs,
                       config, prefix=item.prefix, **options)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "mistral"])  # gemma2: sliding windows and soft-capping
def test_group_equals_each_request_alone_float64(arch):
    adapter, items = _items(arch)
    config = HETAConfig(max_batch=4)
    stats = {}
    got = information_group(adapter, items, config, stats=stats)
    assert stats["alone"] == [] and stats["mixed_passes"] > 0
    for item, scores in zip(items, got):
        assert scores.shape == (item.positions.numel(), item.n_context) and scores.dtype == torch.float64
        torch.testing.assert_close(scores, _alone(adapter, item, config), **TIGHT)


def test_group_equals_each_request_alone_float32():
    adapter, items = _items("gemma2", torch.float32)
    config = HETAConfig(max_batch=3)
    for item, scores in zip(items, information_group(adapter, items, config)):
        torch.testing.assert_close(scores, _alone(adapter, item, config), **FLOAT32)


def test_an_item_gives_the_same_numbers_in_any_group():
    adapter, items = _items()
    config = HETAConfig(max_batch=5)
    first, second, third, fourth = items
    alone = information_group(adapter, [second], config)[0]
    for group, at in [([first, second, third], 1), ([fourth, third, second, first], 2), ([second, fourth], 0),
                      ([third, second], 1)]:
        torch.testing.assert_close(information_group(adapter, group, config)[at], alone, **TIGHT)


def test_passes_mix_requests():
    # With max_batch=4 every request alone ends on a partial pass (5, 8, 3, 11 variants -> 2 + 2 + 1 + 3
    # passes); together the tails fill each other's passes: ceil(27 / 4) = 7 passes.
    adapter, items = _items()
    config = HETAConfig(max_batch=4)
    calls, stats = [], {}
    information_group(adapter, items, config, on_variants=calls.append, stats=stats)
    alone_calls = []
    for item in items:
        _alone(adapter, item, config, on_variants=alone_calls.append)
    assert len(alone_calls) == stats["passes_alone"] == 8
    assert len(calls) == stats["passes"] == 7 and stats["mixed_passes"] >= 2
    assert sum(calls) == sum(alone_calls) == sum(n for n, _ in REQUESTS) and max(calls) == 4


def test_passes_mix_requests_under_the_cpu_token_cap(monkeypatch):
    # The cap on token-positions per pass (a CPU's) bounds shared passes as it bounds one request's.
    monkeypatch.setattr(group_module, "CPU_TOKENS_PER_PASS", 24)
    monkeypatch.setattr(signal_module, "CPU_TOKENS_PER_PASS", 24)
    adapter, items = _items(requests=[(4, 1), (5, 2), (3, 1), (6, 1)])
    config = HETAConfig(max_batch=64)
    stats, calls = {}, []
    got = information_group(adapter, items, config, on_variants=calls.append, stats=stats)
    assert stats["passes"] < stats["passes_alone"] and stats["mixed_passes"] > 0
    for item, scores in zip(items, got):
        torch.testing.assert_close(scores, _alone(adapter, item, config), **TIGHT)


def test_one_request_alone_plans_as_information_does():
    adapter, items = _items()
    config = HETAConfig(max_batch=3)
    for item in items:
        stats, calls, alone_calls = {}, [], []
        information_group(adapter, [item], config, on_variants=calls.append, stats=stats)
        _alone(adapter, item, config, on_variants=alone_calls.append)
        assert calls == alone_calls and stats["passes"] == stats["passes_alone"] and stats["mixed_passes"] == 0


def test_windowed_items_fall_back_and_equal_alone():
    # window_size=6: the 8- and 11-token contexts have several windows and run alone, the rest share passes.
    adapter, items = _items()
    config = HETAConfig(max_batch=4, window_size=6, window_overlap=0.5)
    stats = {}
    got = information_group(adapter, items, config, stats=stats)
    assert stats["alone"] == [1, 3] and stats["passes"] == 2  # 5 + 3 variants at 4 per pass
    for item, scores in zip(items, got):
        torch.testing.assert_close(scores, _alone(adapter, item, config), **TIGHT)


@pytest.mark.parametrize("span", [1, 2, 6])
@pytest.mark.parametrize("max_batch", [3, 32])
def test_span_estimate_shares_passes_and_equals_alone(span, max_batch):
    # The span estimate's rows jump over cached positions at each request's own resume position;
    # shared passes must read every segment's jump from its own request's cache region. Span 6
    # covers the short contexts whole (their rows do not jump) but not the 11-token one.
    adapter, items = _items("gemma2", requests=REQUESTS + [(9, 2)])
    config = HETAConfig(max_batch=max_batch, information_estimator="span", information_span=span)
    stats = {}
    got = information_group(adapter, items, config, stats=stats)
    assert stats["alone"] == [] and stats["mixed_passes"] > 0
    assert stats["passes"] < stats["passes_alone"]
    for item, scores in zip(items, got):
        torch.testing.assert_close(scores, _alone(adapter, item, config), **TIGHT)


def test_span_estimate_in_a_group_is_its_definition():
    # Against the oracle, not only against the engine alone: a shared pass could repeat an error of
    # the single-request path.
    from heta_fast.reference import information_span_reference

    adapter, items = _items()
    config = HETAConfig(max_batch=4, information_estimator="span", information_span=2)
    for item, scores in zip(items, information_group(adapter, items, config)):
        expected = information_span_reference(adapter, item.embeds, item.positions, item.n_context,
                                              item.mask_vectors, span=2)
        torch.testing.assert_close(scores, expected, **TIGHT)


def test_span_rows_pack_fewer_positions_than_exact_rows():
    adapter, items = _items()
    exact, span = {}, {}
    information_group(adapter, items, HETAConfig(max_batch=4), stats=exact)
    information_group(adapter, items, HETAConfig(max_batch=4, information_estimator="span", information_span=1),
                      stats=span)
    assert span["masked_positions"] < exact["masked_positions"]


def test_fisher_estimator_falls_back_and_equals_alone():
    adapter, items = _items()
    config = HETAConfig(max_batch=4, information_estimator="fisher")
    stats = {}
    got = information_group(adapter, items, config, stats=stats)
    assert stats["alone"] == [0, 1, 2, 3] and stats["passes"] == 0
    for item, scores in zip(items, got):
        torch.testing.assert_close(scores, _alone(adapter, item, config), **TIGHT)


def test_a_variant_that_does_not_fit_raises_before_any_work(monkeypatch):
    adapter, items = _items()
    config = HETAConfig(memory_budget=1024)
    with pytest.raises(MemoryBudgetError) as alone:
        _alone(adapter, items[0], config)
    ran = []
    monkeypatch.setattr(adapter, "hidden_states", lambda *a, **k: ran.append(1))
    calls = []
    with pytest.raises(MemoryBudgetError) as grouped:
        information_group(adapter, items, config, on_variants=calls.append)
    assert str(grouped.value) == str(alone.value) and not ran and not calls
