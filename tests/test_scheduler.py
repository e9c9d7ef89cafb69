"""The cross-request scheduler: input order, isolated failures, and numbers independent of grouping."""
import pytest
import torch

from heta_fast import Attributor, FailedAttribution, HETAConfig
from heta_fast.errors import MemoryBudgetError
from heta_fast.request import tokenize_request
from heta_fast.scheduler import Job, Scheduler
from tests.tiny_models import text, tiny_model, tiny_tokenizer

REQUESTS = [(text(10, 3, 44, 7), text(30)), (text(5, 6, 7, 8, 9, 10, 11, 12, 13), text(14, 15)),
            (text(4, 8), text(9)), ("", text(1)), (text(20, 21, 22), ""), (text(40, 41, 42, 43, 44), text(45))]


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig())


@pytest.mark.parametrize("lookahead,max_group", [(1, 1), (3, 2), (32, 8)])
def test_results_in_input_order_equal_single_calls(attributor, lookahead, max_group):
    jobs = [Job(key=f"r{i}", prompt=p, target=t) for i, (p, t) in enumerate(REQUESTS)]
    out = list(Scheduler(attributor, lookahead=lookahead, max_group=max_group).run(jobs))
    assert [key for key, _ in out] == [f"r{i}" for i in range(len(REQUESTS))]
    for i, ((prompt, target), (_, result)) in enumerate(zip(REQUESTS, out)):
        if prompt == "" or target == "":
            assert isinstance(result, FailedAttribution) and result.error_type == "InputError" and result.index == i
            continue
        alone = attributor.attribute(prompt, target)
        # Bitwise: a group attributes its requests one after another (cross-request batching does not
        # pay on a CPU, BENCHMARKS.md), so nothing about the grouping may move a single bit.
        for name in ("scores", "flow", "curvature", "information"):
            assert torch.equal(getattr(result, name), getattr(alone, name)), name


def test_groups_share_a_config_and_similar_lengths(attributor):
    scheduler = Scheduler(attributor, max_group=2)
    other = HETAConfig(beta=2.0)
    jobs = [Job(i, p, t, config=other if i % 2 else None) for i, (p, t) in enumerate(REQUESTS) if p and t]
    pending = [scheduler._admit(i, job) for i, job in enumerate(jobs)]
    groups = scheduler._groups(pending)
    assert sorted(p.order for g in groups for p in g) == list(range(len(jobs)))
    for group in groups:
        assert len(group) <= 2 and len({p.config for p in group}) == 1
        lengths = [p.request.input_ids.numel() for p in group]
        assert max(lengths) <= 1.5 * min(lengths)


def _tokenized(attributor, prompt, target):
    return tokenize_request(attributor.tokenizer, prompt, target, attributor.adapter.max_length,
                            attributor.model.config.vocab_size)


def _fits(attributor, prompt, target, budget):
    try:
        attributor.estimate(prompt, target, HETAConfig(memory_budget=budget))
    except MemoryBudgetError:
        return False
    return True


def test_a_failure_in_a_group_is_that_request_s_alone(attributor):
    """Under a budget the short request fits and the long one does not: inside one group the long one
    is a failure row and the short one still equals its attribution alone, bit for bit."""
    short, long = (text(4, 8), text(9)), (text(*range(10, 34)), text(40))
    low, high = 1, 1 << 32  # the smallest budget the short request fits, by bisection on the memory model
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if _fits(attributor, *short, mid) else (mid + 1, high)
    assert not _fits(attributor, *long, low)
    cfg = HETAConfig(memory_budget=low)
    requests = [_tokenized(attributor, *pair) for pair in (long, short, long)]
    results = attributor.attribute_group(requests, cfg)
    assert [type(r).__name__ for r in results] == ["FailedAttribution", "Attribution", "FailedAttribution"]
    assert {r.error_type for r in results[::2]} == {"MemoryBudgetError"}
    alone = attributor.attribute(*short, config=cfg)
    for name in ("scores", "flow", "curvature", "information"):
        assert torch.equal(getattr(results[1], name), getattr(alone, name)), name
