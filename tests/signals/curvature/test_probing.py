"""estimator="probing": simultaneous block probing against exact Hessian blocks.

The per-token estimate e_i = (1/K) Σ_k s_i (H v^(k))_i equals H_ii r_i plus a cross-block
residual Σ_{j≠i} c_ij H_ij r_j with c_ij = (1/K) Σ_k s_i s_j: mean 0, variance 1/K. The
tolerances below come from that variance, computed from the explicit Hessian.
"""
import math

import torch

from heta_fast.reference import rademacher_probes
from heta_fast.signals.curvature.exact import exact_block_hutchinson
from heta_fast.signals.curvature.probing import sign_patterns, simultaneous_probing
from tests.signals.curvature.helpers import MatrixOperator, full_hessian, operator, setup


def _hadamard(k: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_orthogonal_sign_patterns_make_probing_exact():
    """With K ≥ R and orthogonal sign columns (Hadamard rows) every c_ij vanishes: probing with
    R repeats is then exactly the exact estimator with m = R on the same probes."""
    adapter, x, p = setup("gpt2")
    rows, repeats = torch.arange(5), 3
    probes = rademacher_probes(5, repeats, x.shape[1], seed=4)
    signs = _hadamard(8)[:, :5].expand(repeats, 8, 5).contiguous()
    op = operator(adapter, x, p)
    got = simultaneous_probing(op, rows, probes, signs, chunk=10)
    want = exact_block_hutchinson(op, rows, probes, chunk=15)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def test_estimate_is_the_block_product_plus_the_predicted_cross_block_residual():
    """e_i − H_ii r_i = Σ_{j≠i} c_ij H_ij r_j exactly (the explicit Hessian gives every term), and
    the c_ij of the seeded patterns have mean ≈ 0 and variance ≈ 1/K."""
    adapter, x, p = setup("llama")
    h = full_hessian(adapter, x, p)
    n_ctx, d, patterns = 5, x.shape[1], 64
    probes = rademacher_probes(n_ctx, 1, d, seed=0)
    signs = sign_patterns(n_ctx, 1, patterns, seed=0)[0]  # [K, n_ctx]
    v = torch.zeros(patterns, p + 1, d, dtype=torch.float64)
    v[:, :n_ctx] = signs[:, :, None] * probes[:, 0]
    hv = operator(adapter, x, p)(v)
    est = (signs[:, :, None] * hv[:, :n_ctx]).mean(0)  # [n_ctx, d]
    cross = torch.einsum("idje,je->ijd", h[:n_ctx, :, :n_ctx], probes[:, 0])  # H_ij r_j
    c = signs.t() @ signs / patterns  # [n_ctx, n_ctx], c_ii = 1
    want = torch.einsum("ij,ijd->id", c, cross)
    torch.testing.assert_close(est, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
    many = sign_patterns(200, 1, patterns, seed=9)[0]
    off = (many.t() @ many / patterns)[~torch.eye(200, dtype=torch.bool)]
    assert abs(float(off.mean())) < 5 / math.sqrt(patterns * off.numel())
    assert abs(float(off.var()) * patterns - 1) < 0.05


def test_probing_S_converges_to_exact_within_the_variance_bound():
    """| ‖e_i‖₁ − ‖H_ii r_i‖₁ | ≤ ‖e_i − H_ii r_i‖₁ ≤ √d ‖residual‖₂, E‖residual‖₂² = Σ_j ‖H_ij r_j‖²/K.
    Checked at 6 standard deviations, on a synthetic symmetric matrix (cheap, K large)."""
    g = torch.Generator().manual_seed(0)
    n, d, patterns = 6, 4, 2000
    a = torch.randn(n * d, n * d, dtype=torch.float64, generator=g)
    mat = (a + a.t()).reshape(n, d, n, d)
    rows = torch.arange(n)
    probes = rademacher_probes(n, 2, d, seed=1)
    got = simultaneous_probing(MatrixOperator(mat), rows, probes, sign_patterns(n, 2, patterns, 5), chunk=512)
    want = exact_block_hutchinson(MatrixOperator(mat), rows, probes, chunk=12)
    for i in range(n):
        spread = sum(float((torch.einsum("de,re->rd", mat[i, :, j], probes[j]) ** 2).sum(-1).mean())
                     for j in range(n) if j != i)
        bound = 6 * math.sqrt(d * spread / patterns)
        assert abs(float(got[i] - want[i])) < bound


def test_probing_uses_repeats_times_patterns_products_whatever_the_length():
    mat = torch.eye(40 * 3, dtype=torch.float64).reshape(40, 3, 40, 3)
    op = MatrixOperator(mat)
    s = simultaneous_probing(op, torch.arange(40), rademacher_probes(40, 2, 3, 0), sign_patterns(40, 2, 8, 0), 5)
    assert op.applied == 16
    # H = I: e_i = r_i + Σ_j c_ij (I_ij = 0) r_j = r_i exactly, ‖r_i‖₁ = d.
    torch.testing.assert_close(s, torch.full((40,), 3.0, dtype=torch.float64))


def test_sign_patterns_are_seeded_and_independent_of_the_probes():
    a, b = sign_patterns(10, 2, 8, seed=1), sign_patterns(10, 2, 8, seed=1)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, sign_patterns(10, 2, 8, seed=2))
