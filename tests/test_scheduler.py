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


# ----------------------------------------------------------------------------- shared passes
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("lookahead,max_group", [(6, 6), (3, 2), (6, 3)])
def test_shared_passes_equal_each_request_alone_whatever_its_group(attributor, lookahead, max_group):
    """batching="on": one capture forward and shared signal passes per group; every request's numbers
    equal attributing it alone to float32 rounding, in every grouping (the tolerance of the suite's
    float32 checks: relative to the largest entry)."""
    jobs = [Job(key=i, prompt=p, target=t) for i, (p, t) in enumerate(REQUESTS)]
    out = list(Scheduler(attributor, lookahead=lookahead, max_group=max_group, batching="on").run(jobs))
    assert [key for key, _ in out] == list(range(len(REQUESTS)))
    for (prompt, target), (_, result) in zip(REQUESTS, out):
        if prompt == "" or target == "":
            assert result.error_type == "InputError"
            continue
        alone = attributor.attribute(prompt, target)
        for name in ("scores", "flow", "curvature", "information"):
            assert _rel(getattr(result, name), getattr(alone, name)) < 1e-5, name


def test_shared_passes_are_shared(attributor, monkeypatch):
    """A group of three requests runs one capture forward for all three and one curvature operator."""
    from heta_fast.signals.curvature import group as curvature_group

    forwards, operators = [], []
    capture_group = attributor.adapter.capture_group
    monkeypatch.setattr(attributor.adapter, "capture",
                        lambda *a, **k: pytest.fail("a group must not run a request's capture alone"))
    monkeypatch.setattr(attributor.adapter, "capture_group",
                        lambda embeds, *a, **k: forwards.append(len(embeds)) or capture_group(embeds, *a, **k))
    init = curvature_group.GroupHessian.__init__

    def counted(self, adapter, inputs, *args):
        operators.append(len(inputs))
        init(self, adapter, inputs, *args)

    monkeypatch.setattr(curvature_group.GroupHessian, "__init__", counted)
    import heta_fast.signals.information as information

    stats = {}
    shared = information.information_group
    monkeypatch.setattr(information, "information_group",
                        lambda adapter, items, cfg: shared(adapter, items, cfg, stats=stats))
    requests = [_tokenized(attributor, p, t) for p, t in REQUESTS[:3]]
    results = attributor.attribute_group(requests, batched=True)
    assert all(r.ok for r in results)
    assert forwards == [3]
    # The three requests' masked variants (4 + 9 + 2 tokens) fit one packed pass.
    assert stats["passes"] == 1 and stats["mixed_passes"] == 1
    # One job per (request, target): 1 + 2 + 1 targets, all in one operator under the default budget.
    assert operators == [4]


def test_shared_passes_in_float64_equal_alone_to_1e10():
    att = Attributor(tiny_model("llama", dtype=torch.float64), tiny_tokenizer(), HETAConfig(estimator="sketch",
                                                                                            sketch_rank=8))
    requests = [_tokenized(att, p, t) for p, t in REQUESTS if p and t]
    for result, (prompt, target) in zip(att.attribute_group(requests, batched=True), [r for r in REQUESTS if all(r)]):
        alone = att.attribute(prompt, target)
        for name in ("scores", "flow", "curvature", "information"):
            assert _rel(getattr(result, name), getattr(alone, name)) < 1e-10, name


def test_span_estimate_requests_share_passes_and_equal_alone():
    """The span estimate's requests share the masked passes too (each with its own jump), and each
    request's result equals attributing it alone (float64: to 1e-10)."""
    import heta_fast.signals.information as information

    config = HETAConfig(information_estimator="span", information_span=1, estimator="sketch", sketch_rank=8)
    att = Attributor(tiny_model("llama", dtype=torch.float64), tiny_tokenizer(), config)
    stats, shared = {}, information.information_group
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(information, "information_group",
                      lambda adapter, items, cfg: shared(adapter, items, cfg, stats=stats))
        pairs = [r for r in REQUESTS if all(r)]
        results = att.attribute_group([_tokenized(att, p, t) for p, t in pairs], batched=True)
    assert stats["alone"] == [] and stats["mixed_passes"] > 0
    for result, (prompt, target) in zip(results, pairs):
        alone = att.attribute(prompt, target)
        for name in ("scores", "information"):
            assert _rel(getattr(result, name), getattr(alone, name)) < 1e-10, name


def test_a_failure_in_a_shared_group_is_that_request_s_alone(attributor):
    """Shared passes that raise a typed error (one request over the budget) fall back to one request at
    a time: the failing request is a failure row, the others equal their attribution alone."""
    short, long = (text(4, 8), text(9)), (text(*range(10, 34)), text(40))
    low, high = 1, 1 << 32
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if _fits(attributor, *short, mid) else (mid + 1, high)
    cfg = HETAConfig(memory_budget=low)
    requests = [_tokenized(attributor, *pair) for pair in (long, short)]
    results = attributor.attribute_group(requests, cfg, batched=True)
    assert [type(r).__name__ for r in results] == ["FailedAttribution", "Attribution"]
    assert results[0].error_type == "MemoryBudgetError"
    alone = attributor.attribute(*short, config=cfg)
    assert torch.equal(results[1].scores, alone.scores)


def test_a_non_finite_capture_fails_only_its_request(attributor, monkeypatch):
    requests = [_tokenized(attributor, p, t) for p, t in REQUESTS[:3]]
    capture_group = attributor.adapter.capture_group

    def poisoned(*args, **kwargs):
        captures = capture_group(*args, **kwargs)
        captures[1].log_probs[:] = float("nan")
        return captures

    monkeypatch.setattr(attributor.adapter, "capture_group", poisoned)
    results = attributor.attribute_group(requests, batched=True)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_type == "NonFiniteError"
    alone = attributor.attribute(*REQUESTS[2])
    assert _rel(results[2].scores, alone.scores) < 1e-5


def test_batching_modes(attributor):
    from heta_fast.errors import ConfigError
    from heta_fast.scheduler import shares_passes

    assert shares_passes("on", "cpu") and not shares_passes("off", "cuda")
    assert shares_passes("auto", "cuda") and not shares_passes("auto", "cpu")
    with pytest.raises(ConfigError, match="batching must be one of"):
        Scheduler(attributor, batching="always")


def test_a_request_stopped_by_its_progress_callback_fails_alone_in_a_shared_group(attributor):
    """The service cancels a job by raising from its progress callback: in a shared group that stops
    the group, which then runs one request at a time, so only the stopped request fails."""
    from heta_fast.errors import JobCancelledError

    def cancel(event):
        raise JobCancelledError("cancelled by the client")

    requests = [_tokenized(attributor, p, t) for p, t in REQUESTS[:3]]
    results = attributor.attribute_group(requests, progress=[None, cancel, None], batched=True)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_type == "JobCancelledError"
    alone = attributor.attribute(*REQUESTS[2])
    assert _rel(results[2].scores, alone.scores) < 1e-5
