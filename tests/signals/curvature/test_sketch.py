"""estimator="sketch": the Nyström sketch read block by block."""
import torch

from heta_fast.reference import rademacher_probes
from heta_fast.signals.curvature.exact import exact_block_hutchinson
from heta_fast.signals.curvature.sketch import nystrom_block_hutchinson, nystrom_sketch, pinv_symmetric, sketch_matrix
from tests.signals.curvature.helpers import MatrixOperator, operator, setup


def test_full_rank_sketch_equals_exact_on_a_model():
    """k ≥ (tokens × d) spans the whole space: Y W⁺ Yᵀ = H_RR, so S is the exact estimator's."""
    adapter, x, p = setup("gpt2")
    rows = torch.arange(4)
    probes = rademacher_probes(4, 3, x.shape[1], seed=0)
    op = operator(adapter, x, p)
    got = nystrom_block_hutchinson(op, rows, probes, sketch_matrix(4, x.shape[1], 4 * 16, seed=0), chunk=64)
    want = exact_block_hutchinson(op, rows, probes, chunk=12)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=0)


def test_sketch_is_exact_for_an_indefinite_matrix_of_rank_at_most_k():
    g = torch.Generator().manual_seed(1)
    n, d, r = 8, 5, 6
    u = torch.randn(n * d, r, dtype=torch.float64, generator=g)
    mat = (u @ torch.diag(torch.tensor([5.0, -3, 2, -1, 0.5, -0.2], dtype=torch.float64)) @ u.t()).reshape(n, d, n, d)
    rows, probes = torch.arange(n), rademacher_probes(n, 2, d, seed=2)
    want = exact_block_hutchinson(MatrixOperator(mat), rows, probes, chunk=16)
    for k in (6, 10):
        op = MatrixOperator(mat)
        got = nystrom_block_hutchinson(op, rows, probes, sketch_matrix(n, d, k, seed=3), chunk=4)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
        assert op.applied == k  # k products, whatever the number of tokens


def test_sketch_error_shrinks_with_rank_on_a_decaying_spectrum():
    g = torch.Generator().manual_seed(2)
    n, d = 10, 6
    q, _ = torch.linalg.qr(torch.randn(n * d, n * d, dtype=torch.float64, generator=g))
    spectrum = 0.8 ** torch.arange(n * d, dtype=torch.float64) * torch.where(torch.arange(n * d) % 3 == 0, -1.0, 1.0)
    mat = (q * spectrum) @ q.t()
    mat = mat.reshape(n, d, n, d)
    rows, probes = torch.arange(n), rademacher_probes(n, 4, d, seed=0)
    want = exact_block_hutchinson(MatrixOperator(mat), rows, probes, chunk=40)
    errors = [float((nystrom_block_hutchinson(MatrixOperator(mat), rows, probes, sketch_matrix(n, d, k, 0), 64)
                     - want).abs().max()) for k in (8, 24, 48)]
    assert errors[0] > errors[1] > errors[2]


def test_pinv_drops_near_zero_eigenvalues_and_the_sketch_outputs_have_their_shapes():
    w = torch.diag(torch.tensor([2.0, -4.0, 1e-12], dtype=torch.float64))
    torch.testing.assert_close(pinv_symmetric(w), torch.diag(torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)))
    y, w_pinv = nystrom_sketch(MatrixOperator(torch.eye(12, dtype=torch.float64).reshape(4, 3, 4, 3)),
                               torch.tensor([1, 2]), sketch_matrix(2, 3, 5, 0), chunk=2)
    assert y.shape == (5, 2, 3) and w_pinv.shape == (5, 5)
