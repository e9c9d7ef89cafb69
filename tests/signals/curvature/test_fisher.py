"""use_fisher=True: the Gauss-Newton/Fisher surrogate against its explicit formula."""
import pytest
import torch

from heta_fast.reference import rademacher_probes
from heta_fast.signals.curvature import FisherOperator
from heta_fast.signals.curvature.exact import exact_block_hutchinson
from tests.signals.curvature.helpers import setup, target


def _explicit_fisher(adapter, x, p, token=7):
    """Jᵀ (diag(p) − p pᵀ) J written out: J from the full Jacobian of the position's logits."""
    def logits(e):
        return adapter.logits(e[None], torch.tensor([p]))[0, 0]

    xs = x[: p + 1]
    jac = torch.autograd.functional.jacobian(logits, xs)  # [V, n, d]
    prob = torch.softmax(logits(xs), -1)
    a = torch.diag(prob) - torch.outer(prob, prob)
    return torch.einsum("vnd,vw,wme->ndme", jac, a, jac)


@pytest.mark.parametrize("arch,rtol", [("gpt2", 1e-10), ("llama", 1e-6)])
def test_fisher_operator_equals_the_explicit_formula(arch, rtol):
    adapter, x, p = setup(arch)
    g = _explicit_fisher(adapter, x, p)
    v = torch.randn(4, p + 1, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = FisherOperator(target(adapter, x, p))(v)
    want = torch.einsum("ndme,bme->bnd", g, v)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


def test_fisher_is_positive_semidefinite_and_feeds_the_estimators():
    adapter, x, p = setup("gpt2")
    g = _explicit_fisher(adapter, x, p).reshape((p + 1) * 16, (p + 1) * 16)
    assert float(torch.linalg.eigvalsh(0.5 * (g + g.t())).min()) > -1e-10
    probes = rademacher_probes(p, 2, 16, seed=0)
    got = exact_block_hutchinson(FisherOperator(target(adapter, x, p)), torch.arange(p), probes, chunk=4)
    g4 = g.reshape(p + 1, 16, p + 1, 16)
    want = torch.stack([torch.stack([(g4[i, :, i] @ probes[i, k]).abs().sum() for k in range(2)]).mean()
                        for i in range(p)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
