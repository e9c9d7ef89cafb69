"""Several requests' curvature in shared passes (group.py) against each request alone."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.memory import ModelShape
from heta_fast.signals.curvature import curvature
from heta_fast.signals.curvature import group as G
from tests.signals.curvature.helpers import group_items


@pytest.fixture(scope="module")
def items():
    return group_items()


def _alone(adapter, item, cfg):
    return curvature(adapter, item.embeds, item.positions, item.target_ids,
                     item.n_context, cfg)


@pytest.mark.parametrize("cfg", [HETAConfig(), HETAConfig(estimator="sketch", sketch_rank=12, seed=3),
                                 HETAConfig(window_size=5, window_overlap=0.4),
                                 HETAConfig(estimator="exact", num_probes=3), HETAConfig(layer_subset=1)],
                         ids=["probing", "sketch", "windows", "exact-alone", "layer-subset-alone"])
def test_each_request_equals_alone(items, cfg):
    adapter, its = items
    for item, got in zip(its, G.curvature_group(adapter, its, cfg)):
        want = _alone(adapter, item, cfg)
        assert got.shape == want.shape == (len(item.target_ids), item.n_context)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_a_request_does_not_depend_on_its_companions(items):
    adapter, its = items
    cfg = HETAConfig(seed=7)
    alone = G.curvature_group(adapter, its[1:2], cfg)[0]
    for companions in (its, its[::-1], [its[3], its[1]]):
        at = next(k for k, c in enumerate(companions) if c is its[1])
        got = G.curvature_group(adapter, companions, cfg)[at]
        torch.testing.assert_close(got, alone, rtol=1e-10, atol=1e-10 * float(alone.abs().max()))


def test_groups_hold_what_the_budget_allows(items):
    """Jobs share a group only while the group runs its products in no more passes than its longest
    job alone. Under a budget of exactly one pass of the longest job's 16 probes, each long job
    (15, 14, 13, 11 rows) fills a pass alone, while the two short ones (4 and 2 rows) run in one
    pass together, as the 4-row job would alone."""
    adapter, its = items
    cfg = HETAConfig()
    jobs, _ = G._jobs(its, cfg)
    assert len(jobs) == 1 + 3 + 1 + 1
    assert [len(g) for g in G._groups(adapter, jobs, cfg)] == [6]
    shape, layers = ModelShape.of(adapter.model), len(adapter.layers)
    longest = max(j.x.shape[0] for j in jobs)
    tight = HETAConfig(memory_budget=jobs[0].plan.count * shape.probe_bytes(longest, layers))
    groups = G._groups(adapter, jobs, tight)
    assert [[j.x.shape[0] for j in g] for g in groups] == [[15], [14], [13], [11], [4, 2]]
    for item, got in zip(its, G.curvature_group(adapter, its, tight)):
        want = _alone(adapter, item, tight)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_progress_counts_every_product(items):
    adapter, its = items
    cfg = HETAConfig()
    counts = [[] for _ in its]
    fed = [G.CurvatureItem(i.embeds, i.positions, i.target_ids, i.n_context, counts[k].append)
           for k, i in enumerate(its)]
    G.curvature_group(adapter, fed, cfg)
    per_target = cfg.probing_repeats * cfg.probing_patterns
    assert [sum(c) for c in counts] == [per_target * len(i.target_ids) for i in its]


def test_group_operator_is_block_diagonal(items):
    """A probe in job 0's rows leaves every other job's product exactly 0 (no cross blocks)."""
    adapter, its = items
    op = G.GroupHessian(adapter, [i.embeds[: int(i.positions[0]) + 1] for i in its[:3]],
                        [int(i.positions[0]) for i in its[:3]], [int(i.target_ids[0]) for i in its[:3]])
    jobs, length, d = op.shape
    v = torch.zeros(1, jobs, length, d, dtype=torch.float64)
    v[0, 0, 0] = 1.0
    out = op(v)
    assert out[0, 0].abs().sum() > 0 and out[0, 1:].abs().sum() == 0
