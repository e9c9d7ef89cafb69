"""The CUDA-graph path's device-independent parts on the CPU: buckets, static buffers, padding.

Capture and replay themselves need a GPU (skipped here); what they replay is StaticHVP.run and
StaticGroupHVP.run, checked against the eager operators below, padding included. The group path's
wiring (buckets, probes per pass, reuse, the eager fallback) runs on the CPU through a stand-in
cache whose "graph" replays by running the static computation again."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.signals.curvature import HessianOperator
from heta_fast.signals.curvature import group as G
from heta_fast.signals.curvature.cuda_graphs import (
    GraphCache,
    StaticGroupHVP,
    StaticHVP,
    graphs_for,
    job_bucket,
    length_bucket,
)
from heta_fast.signals.curvature.group_hessian import GroupHessian
from tests.signals.curvature.helpers import group_items, operator, setup, target


def test_length_buckets_are_powers_of_two_from_32_capped_at_the_maximum():
    assert [length_bucket(n) for n in (1, 32, 33, 100, 129)] == [32, 32, 64, 128, 256]
    assert length_bucket(50, max_length=64) == 64 and length_bucket(60, max_length=40) == 60


@pytest.mark.parametrize("arch,layers", [("gpt2", 0), ("llama", 0), ("llama", 1)])
def test_static_padded_hvp_equals_the_eager_operator(arch, layers):
    adapter, x, p = setup(arch)
    static = StaticHVP(adapter, length=length_bucket(p + 1), batch=3, layers=layers)
    v = torch.randn(3, p + 1, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    static.load(x[: p + 1], torch.tensor(p), torch.tensor(7))
    static.vectors.zero_()
    static.vectors[:, : p + 1] = v
    out = static.run()
    want = HessianOperator(target(adapter, x, p, layers=layers))(v)
    torch.testing.assert_close(out[:, : p + 1], want, rtol=1e-6, atol=1e-9)
    assert out[:, p + 1 :].abs().max() == 0  # padding after the target has no curvature


def test_static_buffers_are_reused_for_another_input_of_the_bucket():
    adapter, x, p = setup("gpt2")
    static = StaticHVP(adapter, length=32, batch=2)
    v = torch.ones(2, 32, x.shape[1], dtype=torch.float64)
    static.vectors.copy_(v)
    for q, tok in ((p, 7), (p - 2, 11)):
        static.load(x[: q + 1], torch.tensor(q), torch.tensor(tok))
        got = static.run()[:, : q + 1]
        torch.testing.assert_close(got, operator(adapter, x, q, tok)(v[:, : q + 1]), rtol=1e-10, atol=1e-12)


def test_job_buckets_are_powers_of_two():
    assert [job_bucket(j) for j in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]


def _group(arch="llama", lengths=(6, 4, 5)):
    adapter = setup(arch)[0]
    gen = torch.Generator().manual_seed(2)
    inputs = [adapter.embed(torch.randint(3, 60, (n,), generator=gen)) for n in lengths]
    return adapter, inputs, [n - 1 for n in lengths], [7, 11, 3][: len(lengths)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_static_padded_group_equals_the_eager_group_operator(arch):
    # 3 jobs in a 4-slot, 32-row graph: the spare slot and the padding rows get zero probes and
    # give zero products; every job's product is the eager operator's.
    adapter, inputs, positions, tokens = _group(arch)
    eager = GroupHessian(adapter, inputs, positions, tokens)
    jobs, length, d = eager.shape
    static = StaticGroupHVP(adapter, jobs=job_bucket(jobs), length=length_bucket(length), batch=2)
    static.load(inputs, positions, tokens)
    v = torch.randn(2, jobs, length, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for j, x in enumerate(inputs):
        v[:, j, x.shape[0]:] = 0  # a job's padding rows get no probe (group.py)
    static.vectors.zero_()
    static.vectors[:, :jobs, :length] = v
    out = static.run()
    torch.testing.assert_close(out[:, :jobs, :length], eager(v), rtol=1e-8, atol=1e-10)
    assert out[:, jobs:].abs().max() == 0 and out[:, :, length:].abs().max() == 0


class _ReplayOnCPU:
    """Stands in for a captured graph: replaying runs the static computation again into its output."""

    def __init__(self, static, output):
        self.static, self.output, self.replays = static, output, 0

    def replay(self):
        self.replays += 1
        self.output.copy_(self.static.run())


class _CPUGraphCache(GraphCache):
    """GraphCache with capture replaced by :class:`_ReplayOnCPU` (no CUDA): everything else is the real cache."""

    def __init__(self, adapter):
        self.adapter, self.layers, self.warmup, self.graphs = adapter, 0, 0, {}

    def _capture(self, static):
        output = static.run()
        return _ReplayOnCPU(static, output), static, output


@pytest.mark.parametrize("cfg", [HETAConfig(), HETAConfig(estimator="sketch", sketch_rank=12, seed=3),
                                 HETAConfig(max_batch=5)], ids=["probing", "sketch", "passes-of-5"])
def test_group_passes_through_the_graph_path_equal_eager(cfg):
    adapter, items = group_items()
    eager = G.curvature_group(adapter, items, cfg)
    cache = _CPUGraphCache(adapter)
    graphed = G.curvature_group(adapter, items, cfg, cache)
    for got, want in zip(graphed, eager):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    keys = [k for k in cache.graphs if k[0] == "group"]
    assert keys and all(k[1] in (1, 2, 4, 8) and k[2] == 32 for k in keys)
    replays = sum(graph.replays for graph, _, _ in cache.graphs.values())
    assert replays >= 1  # the products came from replays, not from the capture run
    again = G.curvature_group(adapter, items, cfg, cache)
    assert [k for k in cache.graphs if k[0] == "group"] == keys  # a second batch of requests captures nothing new
    assert sum(graph.replays for graph, _, _ in cache.graphs.values()) == 2 * replays
    for got, want in zip(again, eager):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_a_group_whose_padded_pass_does_not_fit_runs_eagerly():
    adapter, items = group_items()
    shape = G.ModelShape.of(adapter.model)
    # Budget for one probe over the real longest group, not over its padding to 32 rows per job.
    longest = max(int(i.positions.max()) + 1 for i in items)
    cfg = HETAConfig(memory_budget=shape.probe_bytes(longest, len(adapter.layers)) + 1)
    cache = _CPUGraphCache(adapter)
    for got, want in zip(G.curvature_group(adapter, items, cfg, cache), G.curvature_group(adapter, items, cfg)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    assert not [k for k in cache.graphs if k[0] == "group"]


def test_no_graphs_on_the_cpu():
    adapter, _, _ = setup("gpt2")
    assert graphs_for(adapter, HETAConfig(), {}) is None
    with pytest.raises(RuntimeError, match="CUDA"):
        GraphCache(adapter)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_replay_equals_eager_on_cuda():
    adapter, x, p = setup("llama", dtype=torch.float32)
    adapter.model.cuda()
    x = x.cuda().float()
    cache = GraphCache(adapter)
    v = torch.randn(4, p + 1, x.shape[1], device="cuda")
    graphed = cache.operator(x[: p + 1], torch.tensor(p, device="cuda"), torch.tensor(7, device="cuda"), batch=4)
    want = operator(adapter, x, p)(v)
    torch.testing.assert_close(graphed(v), want, rtol=1e-4, atol=1e-5)
    again = cache.operator(x[:p], torch.tensor(p - 1, device="cuda"), torch.tensor(7, device="cuda"), batch=4)
    assert len(cache.graphs) == 1  # same bucket, same graph
    torch.testing.assert_close(again(v[:, :p]), operator(adapter, x, p - 1)(v[:, :p]), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_group_graph_replay_equals_eager_on_cuda():
    adapter, inputs, positions, tokens = _group("llama")
    adapter.model.cuda().float()
    inputs = [x.cuda().float() for x in inputs]
    cache = GraphCache(adapter)
    graphed = cache.group_operator(inputs, positions, tokens, batch=2)
    eager = GroupHessian(adapter, inputs, positions, tokens)
    jobs, length, d = eager.shape
    v = torch.randn(2, jobs, length, d, device="cuda")
    for j, x in enumerate(inputs):
        v[:, j, x.shape[0]:] = 0
    torch.testing.assert_close(graphed(v), eager(v), rtol=1e-4, atol=1e-5)
