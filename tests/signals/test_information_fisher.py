"""The information term's second-order estimate (information_estimator="fisher") against the
mathematics it claims: the exact masked KL for small displacements, and its Fisher by definition."""
import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.errors import ConfigError
from heta_fast.model.adapter import ModelAdapter
from heta_fast.reference import information_reference
from heta_fast.signals.information.fisher import fisher_information, hidden_fisher, top_eigenpairs
from tests.tiny_models import tiny_model

IDS = torch.tensor([2, 10, 33, 5, 41, 7, 19, 28, 12])
N_CTX, N_TARGETS = 7, 3


def _setup(arch):
    adapter = ModelAdapter(tiny_model(arch))
    x = adapter.embed(IDS)
    positions = torch.arange(N_TARGETS) + N_CTX - 1
    return adapter, x, positions


# llama: plain head; gemma2: final soft-capping (D ≠ 1); granite: logit scaling; gpt_neox: untied head.
# Two steps per model, both above where rounding in the model's float32 parts (rotary tables,
# Gemma's norms) swamps a KL of ε² size.
@pytest.mark.parametrize("arch, steps", [("llama", (1e-3, 1e-4)), ("gemma2", (1e-2, 1e-3)),
                                         ("granite", (1e-3, 1e-4)), ("gpt_neox", (1e-3, 1e-4))])
def test_small_masking_converges_to_the_exact_kl(arch, steps):
    # KL(P ‖ P_masked) = ½ δᵀ F δ + O(‖δ‖³): with every eigenpair kept and each mask a step ε
    # from its embedding, the estimate's relative error against the exact masked KL is O(ε).
    adapter, x, positions = _setup(arch)
    step = torch.randn(N_CTX, x.shape[-1], dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    errors = []
    for eps in steps:
        masks = x[:N_CTX] + eps * step
        exact = information_reference(adapter, x, positions, N_CTX, masks)
        got = fisher_information(adapter, x, positions, N_CTX, masks, rank=x.shape[-1])
        assert exact.min() > 0
        errors.append(((got - exact).abs() / exact).max().item())
    assert errors[1] < 0.02 and errors[1] < errors[0] / 4, errors


def test_hidden_fisher_is_its_definition():
    # F = Gᵀ (diag p − p pᵀ) G with G the Jacobian of the transformed logits in h (autograd here).
    adapter = ModelAdapter(tiny_model("gemma2"))
    weight, bias, transform = adapter.unembedding(transforms=True)
    h = torch.randn(weight.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def logits(v):
        z = v @ weight.t()
        return transform(z if bias is None else z + bias)

    g = torch.autograd.functional.jacobian(logits, h)  # [V, d]
    p = torch.softmax(logits(h), -1)
    expected = g.t() @ (torch.diag(p) - torch.outer(p, p)) @ g
    torch.testing.assert_close(hidden_fisher(h, weight, bias, transform), expected, rtol=1e-9, atol=1e-12)


def test_fewer_eigenpairs_give_less_and_all_of_them_give_the_quadratic_form():
    adapter, x, positions = _setup("llama")
    masks = torch.zeros(N_CTX, x.shape[-1], dtype=x.dtype)
    d = x.shape[-1]
    runs = [fisher_information(adapter, x, positions, N_CTX, masks, rank=k) for k in (1, 3, d)]
    assert (runs[0] <= runs[1] + 1e-12).all() and (runs[1] <= runs[2] + 1e-12).all()
    assert runs[0].sum() < runs[2].sum()
    # rank = d: ½ δᵀ (Jᵀ F J) δ for each token, with J from autograd's full Jacobian of h.
    hidden = lambda e: adapter.final_hidden(e[None])[0, positions[0]]  # noqa: E731
    jac = torch.autograd.functional.jacobian(hidden, x)  # [d, n, d]
    weight, bias, transform = adapter.unembedding(transforms=True)
    fisher = hidden_fisher(hidden(x), weight, bias, transform)
    for i in range(N_CTX):
        move = jac[:, i] @ (masks[i] - x[i])
        torch.testing.assert_close(runs[2][0, i], 0.5 * move @ fisher @ move, rtol=1e-5, atol=1e-14)


def test_top_eigenpairs_are_the_largest_and_orthonormal():
    a = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    values, vectors = top_eigenpairs(a @ a.t(), 3)
    assert values.shape == (3,) and (values[:-1] >= values[1:]).all()
    torch.testing.assert_close(values, torch.linalg.eigvalsh(a @ a.t()).flip(0)[:3])
    torch.testing.assert_close(vectors @ vectors.t(), torch.eye(3, dtype=torch.float64))


def test_the_engine_runs_it_on_request_and_counts_its_work(tiny_model_dir):
    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    config = HETAConfig(information_estimator="fisher", information_rank=4)
    result = attributor.attribute([5, 9, 12, 7, 30], [11, 3], config=config)
    assert result.information.shape == (2, 5) and (result.information >= 0).all()
    assert result.information[1].sum() > 0
    estimate = attributor.estimate([5, 9, 12, 7, 30], [11, 3], config=config)
    info = next(p for p in estimate if p.phase == "information")
    assert (info.units, info.unit, info.passes) == (2, "targets", 1 + 2 * 4)


@pytest.mark.parametrize("bad", [dict(information_estimator="taylor"), dict(information_rank=0),
                                 dict(information_rank=2.5)])
def test_bad_estimator_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="information_"):
        HETAConfig(**bad)

