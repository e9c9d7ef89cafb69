"""The curvature signal as the engine runs it: dispatch by estimator, seeds, windows, options."""
import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.reference import rademacher_probes
from heta_fast.signals.curvature.exact import exact_block_hutchinson
from heta_fast.signals.curvature.probing import sign_patterns, simultaneous_probing
from heta_fast.signals.curvature.sketch import nystrom_block_hutchinson, sketch_matrix
from tests.signals.curvature.helpers import operator
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT, TARGET = text(10, 3, 44, 7, 21, 9), text(30)


def _attributor(arch="gpt2", **cfg):
    cfg.setdefault("components", ("curvature",))
    return Attributor(tiny_model(arch), tiny_tokenizer(), HETAConfig(**cfg))


def _inputs(attr, prompt=PROMPT, target=TARGET):
    res_ids = attr.tokenizer(prompt)["input_ids"]
    tok = attr.tokenizer(target, add_special_tokens=False)["input_ids"]
    x = attr.adapter.embed(torch.tensor(res_ids))
    return x, len(res_ids), tok[0]


@pytest.mark.parametrize("estimator", ["exact", "probing", "sketch"])
def test_engine_dispatches_to_the_estimator_with_the_documented_random_draws(estimator):
    attr = _attributor(estimator=estimator, num_probes=3, probing_repeats=2, probing_patterns=4, sketch_rank=20,
                       seed=5)
    got = attr.attribute(PROMPT, TARGET).curvature[0]
    x, n_ctx, tok = _inputs(attr)
    op, rows, d = operator(attr.adapter, x, n_ctx - 1, tok), torch.arange(n_ctx), x.shape[1]
    if estimator == "exact":
        want = exact_block_hutchinson(op, rows, rademacher_probes(n_ctx, 3, d, 5), 8)
    elif estimator == "probing":
        want = simultaneous_probing(op, rows, rademacher_probes(n_ctx, 2, d, 5), sign_patterns(n_ctx, 2, 4, 5), 8)
    else:
        want = nystrom_block_hutchinson(op, rows, rademacher_probes(n_ctx, 3, d, 5), sketch_matrix(n_ctx, d, 20, 5), 8)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("estimator", ["exact", "probing", "sketch"])
def test_two_runs_give_identical_numbers_and_the_seed_changes_them(estimator):
    a = _attributor("llama", estimator=estimator, num_probes=2, seed=3).attribute(PROMPT, TARGET).curvature
    b = _attributor("llama", estimator=estimator, num_probes=2, seed=3).attribute(PROMPT, TARGET).curvature
    c = _attributor("llama", estimator=estimator, num_probes=2, seed=4).attribute(PROMPT, TARGET).curvature
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_memory_budget_chunking_does_not_change_the_numbers():
    big = _attributor(estimator="exact", num_probes=3).attribute(PROMPT, TARGET).curvature
    small = _attributor(estimator="exact", num_probes=3, max_batch=1).attribute(PROMPT, TARGET).curvature
    torch.testing.assert_close(small, big, rtol=1e-12, atol=0)


def test_fisher_and_layer_subset_options_run_through_the_engine():
    base = _attributor(estimator="exact", num_probes=2).attribute(PROMPT, TARGET).curvature
    fisher = _attributor(estimator="exact", num_probes=2, use_fisher=True).attribute(PROMPT, TARGET).curvature
    last = _attributor(estimator="exact", num_probes=2, layer_subset=1).attribute(PROMPT, TARGET).curvature
    every = _attributor(estimator="exact", num_probes=2, layer_subset=2).attribute(PROMPT, TARGET).curvature
    assert not torch.allclose(fisher, base) and not torch.allclose(last, base)
    torch.testing.assert_close(every, base, rtol=1e-9, atol=0)


def test_windows_follow_the_shared_window_definition():
    """size 3, overlap 0.5 over 6 tokens: windows [0,3), [2,5), [3,6). Token 5 is only in the last
    window, whose input is the full request; tokens 0, 1 only in the first, whose input is the
    request cut after token 2 (the target is then predicted at position 2)."""
    attr = _attributor(estimator="exact", num_probes=2)
    x, n_ctx, tok = _inputs(attr)
    windowed = _attributor(estimator="exact", num_probes=2, window_size=3,
                           window_overlap=0.5).attribute(PROMPT, TARGET).curvature[0]
    plain = attr.attribute(PROMPT, TARGET).curvature[0]
    probes = rademacher_probes(n_ctx, 2, x.shape[1], 0)
    first = exact_block_hutchinson(operator(attr.adapter, x, 2, tok), torch.arange(2), probes[:2], 8)
    torch.testing.assert_close(windowed[5], plain[5], rtol=1e-10, atol=0)
    torch.testing.assert_close(windowed[:2], first, rtol=1e-10, atol=0)
    assert not torch.allclose(windowed[2:5], plain[2:5])
