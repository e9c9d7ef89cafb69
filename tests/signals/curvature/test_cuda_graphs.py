"""The CUDA-graph path's device-independent parts on the CPU: buckets, static buffers, padding.

Capture and replay themselves need a GPU (skipped here); what they replay is StaticHVP.run,
which is checked against the eager operator below, padding included."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.signals.curvature import HessianOperator
from heta_fast.signals.curvature.cuda_graphs import GraphCache, StaticHVP, graphs_for, length_bucket
from tests.signals.curvature.helpers import operator, setup, target


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
