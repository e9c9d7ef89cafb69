"""Batched Hessian-vector products against the explicit Hessian (torch.func.hessian, float64)."""
import pytest
import torch

from heta_fast.curvature.hvp import HessianOperator, apply_chunked
from tests.curvature.helpers import full_hessian, operator, setup, target


@pytest.mark.parametrize("arch,rtol", [("gpt2", 1e-10), ("llama", 1e-6), ("gptj", 1e-6)])
@pytest.mark.parametrize("mode", ["rev-rev", "fwd-rev"])
def test_batched_hvp_equals_explicit_hessian(arch, rtol, mode):
    adapter, x, p = setup(arch)
    h = full_hessian(adapter, x, p)
    v = torch.randn(3, *x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = operator(adapter, x, p, mode=mode)
    got = op(v)
    want = torch.einsum("ndme,bme->bnd", h, v)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))
    assert op.applied == 3 and op.shape == tuple(x.shape)


def test_rows_after_the_target_position_are_dropped_by_causality():
    adapter, x, p = setup("gpt2")
    op = operator(adapter, x, p - 2)
    assert op.shape == (p - 1, x.shape[1])


def test_parameters_are_constants_and_get_no_gradient():
    adapter, x, p = setup("llama")
    op = operator(adapter, x, p)
    op(torch.ones(2, *op.shape, dtype=torch.float64))
    assert all(param.grad is None and not param.requires_grad for param in adapter.model.parameters())


def test_unknown_mode_is_refused():
    adapter, x, p = setup("gpt2")
    with pytest.raises(ValueError, match="HVP mode"):
        HessianOperator(target(adapter, x, p), mode="magic")


def test_apply_chunked_visits_every_vector_once_in_order():
    seen = []
    apply_chunked(lambda v: v * 2, lambda a, b: torch.arange(a, b, dtype=torch.float64)[:, None, None], 7, 3,
                  lambda a, b, out: seen.append((a, b, out.flatten().tolist())))
    assert seen == [(0, 3, [0.0, 2.0, 4.0]), (3, 6, [6.0, 8.0, 10.0]), (6, 7, [12.0])]
