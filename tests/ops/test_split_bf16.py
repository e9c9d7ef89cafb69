"""The split-bf16 linear: its oracle against float64 mathematics, the MKL path against the oracle
over odd shapes, and the fallback where MKL's bf16 GEMM is missing."""
import pytest
import torch

from heta_fast.ops import split_bf16
from heta_fast.ops.split_bf16 import mkl, split_bf16_linear, split_bf16_linear_reference, split_halves
from tests.ops.utils import assert_rel_close

needs_mkl = pytest.mark.skipif(not split_bf16.available(), reason="torch here exports no MKL bf16 GEMM")
# Split activations keep ~16 bits of mantissa: against the exact product with the same bf16 weight
# the error is ~2^-17 per term, summed over K terms of mixed sign (measured ≤ 4e-7 of the largest entry).
SPLIT_RTOL = 1e-5


def _case(rows, k, n, seed=0, bias=True, lead=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, rows, k, generator=g) * 3
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g) if bias else None
    return x, w, b


def test_the_halves_carry_sixteen_bits():
    x, _, _ = _case(1271, 64, 1)
    hi, lo = split_halves(x)
    assert hi.dtype == lo.dtype == torch.bfloat16 and hi.shape == lo.shape == (1271, 64)
    err = (hi.double() + lo.double() - x.double()).abs()
    assert (err <= x.double().abs() * 2.0**-16).all()  # bf16 alone: 2^-9
    assert ((hi.double() - x.double()).abs() > x.double().abs() * 2.0**-12).any()


@pytest.mark.parametrize("rows,k,n", [(1, 7, 3), (1271, 577, 13), (64, 576, 1536)])
def test_the_oracle_is_the_exact_product_with_the_rounded_weight(rows, k, n):
    x, w, b = _case(rows, k, n)
    exact = x.double() @ w.double().t() + b.double()
    assert_rel_close("split oracle", exact, split_bf16_linear_reference(x, w, b).double(), SPLIT_RTOL)
    plain = (x.to(torch.bfloat16).double() @ w.double().t() + b.double())  # bf16 activations
    assert (plain - exact).abs().max() > 100 * (split_bf16_linear_reference(x, w, b).double() - exact).abs().max()


@needs_mkl
@pytest.mark.parametrize("rows,k,n,bias,lead", [(1, 7, 3, True, ()), (1271, 577, 13, False, ()),
                                                (37, 576, 1536, True, (2,)), (0, 16, 5, True, ()),
                                                (5, 16, 0, False, ()), (4, 0, 6, True, ())])
def test_mkl_matches_the_oracle_on_odd_shapes(rows, k, n, bias, lead):
    x, w, b = _case(rows, k, n, bias=bias, lead=lead)
    got = split_bf16_linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (*lead, rows, n)
    want = split_bf16_linear_reference(x, w, b)
    if want.numel():
        assert_rel_close("split mkl", want.double(), got.double(), SPLIT_RTOL)


@needs_mkl
def test_shared_halves_give_the_same_result():
    x, w, b = _case(33, 40, 9)
    torch.testing.assert_close(split_bf16_linear(x, w, b, split_halves(x)), split_bf16_linear(x, w, b),
                               rtol=0, atol=0)


def test_without_mkl_the_dispatcher_runs_the_oracle(monkeypatch):
    monkeypatch.setattr(mkl, "gemm", lambda: None)
    assert not split_bf16.available()
    x, w, b = _case(9, 11, 4)
    torch.testing.assert_close(split_bf16_linear(x, w, b), split_bf16_linear_reference(x, w, b), rtol=0, atol=0)
