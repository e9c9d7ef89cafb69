"""estimator="exact": the batched block Hutchinson equals the reference loop with the same probes."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.reference import curvature_reference, rademacher_probes
from heta_fast.signals.curvature import HessianOperator
from heta_fast.signals.curvature.exact import exact_block_hutchinson, exact_by_suffix, suffix_group_size
from heta_fast.signals.curvature.operators import OperatorFactory
from heta_fast.signals.curvature.target import TargetFunction
from tests.signals.curvature.helpers import blocks, full_hessian, operator, setup


# GPT-2 is float64 throughout; transformers' Llama keeps RMSNorm/rotary in float32 (~1e-7).
@pytest.mark.parametrize("arch,rtol", [("gpt2", 1e-8), ("llama", 1e-6), ("mistral", 1e-6)])
def test_exact_equals_the_reference_loop_with_shared_probes(arch, rtol):
    adapter, x, p = setup(arch)
    n_ctx = p  # the target position's own token is conditioning, not context
    probes = rademacher_probes(n_ctx, 4, x.shape[1], seed=3)
    want = curvature_reference(adapter, x, p, 7, n_ctx, probes)
    got = exact_block_hutchinson(operator(adapter, x, p), torch.arange(n_ctx), probes, chunk=5)
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12)


def test_exact_equals_explicit_hessian_blocks_for_a_subset_of_rows():
    adapter, x, p = setup("gpt2")
    rows = torch.tensor([1, 3, 4])
    probes = rademacher_probes(6, 3, x.shape[1], seed=0)[rows]
    hb = blocks(full_hessian(adapter, x, p))[rows]
    want = torch.einsum("rde,rme->rmd", hb, probes).abs().sum(-1).mean(-1)
    got = exact_block_hutchinson(operator(adapter, x, p), rows, probes, chunk=4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("chunk", [1, 7])
def test_chunking_gives_the_numbers_of_one_big_batch(chunk):
    adapter, x, p = setup("gpt2")
    probes = rademacher_probes(5, 3, x.shape[1], seed=2)
    op = operator(adapter, x, p)
    whole = exact_block_hutchinson(op, torch.arange(5), probes, chunk=15)
    got = exact_block_hutchinson(op, torch.arange(5), probes, chunk=chunk)
    torch.testing.assert_close(got, whole, rtol=1e-12, atol=0)
    assert op.applied == 30


@pytest.mark.parametrize("arch,rtol", [("gpt2", 1e-10), ("mistral", 1e-6), ("gptj", 1e-8)])
@pytest.mark.parametrize("group", [1, 2, 5])
def test_suffix_groups_give_the_whole_input_numbers(arch, rtol, group):
    """A group starting at row a runs rows a.. only, rows < a frozen as keys/values."""
    adapter, x, p = setup(arch)
    probes = rademacher_probes(5, 2, x.shape[1], seed=0)
    rows = torch.arange(5)
    whole = exact_block_hutchinson(operator(adapter, x, p), rows, probes, chunk=10)
    factory = OperatorFactory(adapter, x, p, 7, HETAConfig())
    starts = []

    def spy(start=0):
        starts.append(start)
        return factory(start)

    got = exact_by_suffix(spy, rows, probes, group)
    torch.testing.assert_close(got, whole, rtol=rtol, atol=1e-12)
    assert starts == list(range(0, 5, group))


def test_suffix_operator_is_the_hessian_restricted_to_the_suffix():
    adapter, x, p = setup("llama")
    h = full_hessian(adapter, x, p)
    op = HessianOperator(TargetFunction(adapter, x[: p + 1], torch.tensor(p), torch.tensor(7), start=2))
    assert op.shape == (p - 1, x.shape[1])
    v = torch.randn(2, p - 1, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.einsum("ndme,bme->bnd", h[2:, :, 2:], v)
    torch.testing.assert_close(op(v), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_suffix_group_size_balances_primal_and_probes():
    assert suffix_group_size(56, 64) == 2 and suffix_group_size(512, 10) == 12 and suffix_group_size(3, 64) == 1
