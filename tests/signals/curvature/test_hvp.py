"""Batched Hessian-vector products against the explicit Hessian (torch.func.hessian, float64)."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.signals.curvature.hvp import apply_chunked
from heta_fast.signals.curvature.operators import OperatorFactory
from tests.signals.curvature.helpers import TOKEN, full_hessian, operator, setup


@pytest.mark.parametrize("arch,rtol", [("gpt2", 1e-10), ("llama", 1e-6), ("gptj", 1e-6)])
def test_batched_hvp_equals_explicit_hessian(arch, rtol):
    adapter, x, p = setup(arch)
    h = full_hessian(adapter, x, p)
    v = torch.randn(3, *x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = operator(adapter, x, p)
    got = op(v)
    want = torch.einsum("ndme,bme->bnd", h, v)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))
    assert op.applied == 3 and op.shape == tuple(x.shape)


def test_the_operator_factory_drops_rows_after_the_target_position():
    # By causality rows after the target cannot change f: the production factory cuts them, and
    # its operator is the exact Hessian of the cut input.
    adapter, x, p = setup("gpt2")
    op, chunk = OperatorFactory(adapter, x, p - 2, TOKEN, HETAConfig())(0)
    assert op.shape == (p - 1, x.shape[1]) and chunk >= 1
    v = torch.randn(2, p - 1, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.einsum("ndme,bme->bnd", full_hessian(adapter, x, p - 2), v)
    torch.testing.assert_close(op(v), want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_parameters_are_constants_and_get_no_gradient():
    adapter, x, p = setup("llama")
    op = operator(adapter, x, p)
    op(torch.ones(2, *op.shape, dtype=torch.float64))
    assert all(param.grad is None and not param.requires_grad for param in adapter.model.parameters())


def test_apply_chunked_visits_every_vector_once_in_order():
    seen = []
    apply_chunked(lambda v: v * 2, lambda a, b: torch.arange(a, b, dtype=torch.float64)[:, None, None], 7, 3,
                  lambda a, b, out: seen.append((a, b, out.flatten().tolist())))
    assert seen == [(0, 3, [0.0, 2.0, 4.0]), (3, 6, [6.0, 8.0, 10.0]), (6, 7, [12.0])]
