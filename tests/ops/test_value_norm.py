"""Tests for per-head value norms (heta_fast.ops.value_norm, heta_fast.kernels.value_norm).

Fast paths are compared with ``value_norm_reference`` in float64 on the same (already
rounded) inputs; the reference is checked against explicit loops.  The Triton kernel
runs under ``TRITON_INTERPRET=1`` on CPU (set in tests/conftest.py) unless a GPU is
present.
"""

from __future__ import annotations

import pytest
import torch

import heta_fast.ops.value_norm as value_norm_ops
from heta_fast.ops.value_norm import value_norm
from heta_fast.ops.value_norm.blocked import value_norm_blocked
from heta_fast.ops.value_norm.naive import value_norm_reference
from tests.ops.utils import EXACT, GQA, RTOL, assert_close, assert_rel_close, force_triton, spy, triton_kernel


def make_case(heads, n, dh, d_model, dtype, seed=0):
    """v [Hkv, n, dh] (with a bias-like offset) and w_o [H, dh, d_model] in ``dtype``."""
    n_heads, n_kv = heads
    gen = torch.Generator().manual_seed(seed)
    bias = torch.randn(n_kv, 1, dh, generator=gen, dtype=torch.float64)
    v = (torch.randn(n_kv, n, dh, generator=gen, dtype=torch.float64) + bias).to(dtype)
    w_o = (torch.randn(n_heads, dh, d_model, generator=gen, dtype=torch.float64) * dh**-0.5).to(dtype)
    return v, w_o


def test_reference_matches_loops():
    heads, n = (4, 2), 5
    v, w_o = make_case(heads, n, 6, 11, torch.float64)
    expected = torch.zeros(heads[0], n, dtype=torch.float64)
    for h in range(heads[0]):
        for i in range(n):
            out = [sum(v[h // 2, i, d] * w_o[h, d, c] for d in range(6)) for c in range(11)]
            expected[h, i] = sum(abs(x) for x in out)
    got = value_norm_reference(v, w_o)
    assert got.dtype == torch.float64
    assert_close("vn", expected, got, EXACT, EXACT)


def test_detects_wrong_gqa_mapping():
    """Sanity: swapping which kv head a query head reads changes the result."""
    v, w_o = make_case((4, 2), 20, 16, 32, torch.float64)
    good = value_norm_reference(v, w_o)
    wrong = value_norm_blocked(v, w_o[[0, 2, 1, 3]])[[0, 2, 1, 3]]
    assert (good - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("d_model", [576, 101])
@pytest.mark.parametrize("dh", [64, 80])
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("n", [1, 7, 129, 333])
def test_blocked_float64_tight(n, heads, dh, d_model):
    v, w_o = make_case(heads, n, dh, d_model, torch.float64, seed=n + dh)
    expected = value_norm_reference(v, w_o)
    for block in (16, 128):
        got = value_norm_blocked(v, w_o, block=block)
        assert got.dtype == torch.float64 and got.shape == (heads[0], n)
        assert_rel_close(f"block={block}", expected, got, RTOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dh", [64, 80])
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("n", [1, 7, 129, 333])
def test_blocked_low_precision(n, heads, dh, dtype):
    v, w_o = make_case(heads, n, dh, 576, dtype, seed=3 * n + dh)
    expected = value_norm_reference(v.double(), w_o.double())
    got = value_norm_blocked(v, w_o)
    assert got.dtype == torch.float32
    assert_rel_close("vn", expected, got, RTOL[dtype])


def test_dispatcher_cpu_tensors_take_blocked_path(monkeypatch):
    calls = spy(monkeypatch, value_norm_ops, "value_norm_blocked")
    v, w_o = make_case((9, 3), 50, 64, 576, torch.float32)
    assert value_norm(v, w_o).dtype == torch.float32
    assert len(calls) == 1


@pytest.mark.interpreter
def test_dispatcher_triton_branch_matches_reference(monkeypatch):
    """The dispatcher's Triton branch (forced onto CPU tensors under the interpreter)."""
    device, kernel_calls = force_triton(monkeypatch, "value_norm", "value_norm_triton")
    v, w_o = make_case((9, 3), 50, 64, 576, torch.float32)
    expected = value_norm_reference(v.double(), w_o.double())
    got = value_norm(v.to(device), w_o.to(device))
    assert len(kernel_calls) == 1
    assert got.dtype == torch.float32 and got.device.type == device
    assert_rel_close("vn", expected, got, RTOL[torch.float32])
    with pytest.raises(ValueError):  # the op's own checks run before the kernel
        value_norm(v.to(device), w_o[:4].to(device))
    assert len(kernel_calls) == 1


@pytest.mark.interpreter
def test_dispatcher_float64_stays_on_blocked_path(monkeypatch):
    """float64 value norms never take the float32 Triton kernel, even where it would run."""
    _, kernel_calls = force_triton(monkeypatch, "value_norm", "value_norm_triton")
    blocked_calls = spy(monkeypatch, value_norm_ops, "value_norm_blocked")
    v, w_o = make_case((4, 2), 19, 8, 32, torch.float64)
    assert value_norm(v, w_o).dtype == torch.float64
    assert (len(kernel_calls), len(blocked_calls)) == (0, 1)


def test_bad_shapes_raise():
    v, w_o = make_case((4, 2), 9, 16, 32, torch.float32)
    with pytest.raises(ValueError):
        value_norm_blocked(v, w_o[:, :8])
    with pytest.raises(ValueError):
        value_norm_blocked(v, w_o[:3])


# ---------------------------------------------------------------------------
# Triton kernel (interpreter on CPU)
# ---------------------------------------------------------------------------


def _triton_value_norm():
    return triton_kernel("value_norm", "value_norm_triton")


# (n, heads, dh, d_model, dtype, pinned (block_n, block_c))
TRITON_CASES = [
    (1, (9, 3), 64, 576, torch.float32, None),
    (7, (4, 1), 80, 101, torch.float16, None),
    (7, (4, 4), 64, 576, torch.float32, (16, 16)),
    (129, (9, 3), 80, 576, torch.float32, None),
    (129, (4, 1), 64, 101, torch.float16, (16, 32)),
    (333, (9, 3), 64, 576, torch.float32, None),
    (333, (4, 4), 80, 576, torch.float16, None),
    # bf16 (the interpreter holds it as uint16 bit patterns: the dot operands must be widened)
    (1, (4, 1), 80, 101, torch.bfloat16, None),
    (7, (9, 3), 64, 576, torch.bfloat16, (16, 32)),
    (129, (4, 4), 80, 101, torch.bfloat16, None),
    (333, (2, 1), 64, 576, torch.bfloat16, None),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("n,heads,dh,d_model,dtype,tiles", TRITON_CASES)
def test_triton_matches_reference(n, heads, dh, d_model, dtype, tiles):
    value_norm_triton, device = _triton_value_norm()
    v, w_o = make_case(heads, n, dh, d_model, dtype, seed=5 * n + dh)
    expected = value_norm_reference(v.double(), w_o.double())
    block_n, block_c = tiles or (None, None)
    got = value_norm_triton(v.to(device), w_o.to(device), block_n=block_n, block_c=block_c)
    assert got.dtype == torch.float32 and got.shape == (heads[0], n)
    assert_rel_close("vn", expected, got, RTOL[dtype])


@pytest.mark.interpreter
def test_triton_checks_shapes():
    """The kernel's own (minimal) checks: shapes and GQA grouping."""
    value_norm_triton, device = _triton_value_norm()
    v, w_o = make_case((4, 2), 9, 16, 32, torch.float32)
    for bad_v, bad_w in ((v, w_o[:, :8]), (v, w_o[:3]), (v[0], w_o)):
        with pytest.raises(ValueError):
            value_norm_triton(bad_v.to(device), bad_w.to(device))


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_strided_w_o(dtype):
    """w_o as a transposed view of an nn.Linear weight [d_model, H*dh] (not contiguous)."""
    value_norm_triton, device = _triton_value_norm()
    heads, dh, d_model, n = (4, 2), 64, 96, 33
    v, _ = make_case(heads, n, dh, d_model, dtype)
    weight = torch.randn(d_model, heads[0] * dh, generator=torch.Generator().manual_seed(1)).to(dtype)
    w_o = weight.t().reshape(heads[0], dh, d_model)  # o_proj.weight layout
    assert not w_o.is_contiguous()
    expected = value_norm_reference(v.double(), w_o.double())
    got = value_norm_triton(v.to(device), w_o.to(device))
    assert_rel_close("vn", expected, got, RTOL[dtype])


@pytest.mark.interpreter
@pytest.mark.parametrize(("v_dtype", "w_dtype"), [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)])
def test_triton_mixed_dtypes(v_dtype, w_dtype):
    """v and w_o of different dtypes are multiplied in their promoted dtype (fp32 here)."""
    value_norm_triton, device = _triton_value_norm()
    v, _ = make_case((4, 1), 37, 80, 101, v_dtype, seed=4)
    w_o = make_case((4, 1), 37, 80, 101, w_dtype, seed=5)[1]
    expected = value_norm_reference(v.double(), w_o.double())
    got = value_norm_triton(v.to(device), w_o.to(device))
    assert_rel_close("vn", expected, got, RTOL[torch.float32])
