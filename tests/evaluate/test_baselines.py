"""Baselines against their definitions, on tiny float64 models."""
import pytest
import torch

from heta_fast import Attribution, HETAConfig
from heta_fast.engine import Attributor
from heta_fast.errors import ConfigError
from heta_fast.evaluate.baselines import (
    gauss_legendre,
    heta_variants,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    path_quadrature,
    rollout,
    saliency,
)
from heta_fast.evaluate.methods import ALL, GRID, METHODS, resolve_methods, run_methods
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PROMPT = text(5, 9, 13, 20, 31, 7)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def attributor(request):
    return Attributor(tiny_model(request.param), tiny_tokenizer(),
                      HETAConfig(num_probes=1, max_batch=5))


def _f(attributor, embeds, position, token):
    """f = log p(token | embeds[:position+1]) (HETA's f)."""
    return attributor.adapter.log_probs(embeds[None, : position + 1], torch.tensor([position]))[0, 0, token]


def _inputs(attributor, target_words):
    ids = torch.tensor(tiny_tokenizer()(PROMPT + " " + text(*target_words))["input_ids"])
    return ids, attributor.adapter.embed(ids)


def test_quadrature_integrates_polynomials_exactly():
    u, w = gauss_legendre(4)
    assert float(w.sum()) == pytest.approx(1.0)
    assert float((w * u ** 7).sum()) == pytest.approx(1 / 8)  # exact up to degree 2·4 − 1
    a, w = path_quadrature(4)  # α = u²: g(u²)·2u has degree 2k + 1 for g = α^k
    for k in range(4):
        assert float((w * a ** k).sum()) == pytest.approx(1 / (k + 1), rel=1e-12)
    assert float(a.min()) > 0 and float(a.max()) < 1
    with pytest.raises(ValueError):
        gauss_legendre(0)


@pytest.mark.parametrize("targets", [(40,), (40, 41)])
def test_integrated_gradients_completeness(attributor, targets):
    res = integrated_gradients(attributor, PROMPT, text(*targets), steps=32)
    ids, x = _inputs(attributor, targets)
    n = 6
    base = x.clone()
    base[:n] = 0
    for t, y in enumerate(targets):
        p = n - 1 + t
        expected = float(_f(attributor, x, p, ids[n + t]) - _f(attributor, base, p, ids[n + t]))
        assert float(res.scores[t].sum()) == pytest.approx(expected, rel=1e-3, abs=1e-6)
        assert res.config["f_difference"][t] == pytest.approx(expected, rel=1e-9)
        assert res.config["completeness_gap"][t] == pytest.approx(float(res.scores[t].sum()) - expected, abs=1e-9)
    assert isinstance(res, Attribution) and res.method == "integrated_gradients"
    assert res.scores.shape == (len(targets), n)


def test_integrated_gradients_equals_the_quadrature_written_out(attributor):
    res = integrated_gradients(attributor, PROMPT, text(40), steps=3)
    ids, x = _inputs(attributor, (40,))
    alphas, weights = path_quadrature(3)
    total = torch.zeros(6, x.shape[-1], dtype=torch.float64)
    for a, w in zip(alphas.tolist(), weights.tolist()):
        xa = (a * x).detach().requires_grad_(True)  # baseline 0: x' + a (x − x') = a x
        (g,) = torch.autograd.grad(_f(attributor, xa, 5, ids[6]), xa)
        total += w * g[:6]
    torch.testing.assert_close(res.scores[0], (total * x[:6]).sum(-1))


def test_saliency_and_input_x_gradient(attributor):
    targets = (40, 41)
    sal = saliency(attributor, PROMPT, text(*targets))
    ixg = input_x_gradient(attributor, PROMPT, text(*targets))
    ids, x = _inputs(attributor, targets)
    for t in range(2):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_f(attributor, xg, 5 + t, ids[6 + t]), xg)
        torch.testing.assert_close(sal.scores[t], g[:6].norm(dim=-1))
        torch.testing.assert_close(ixg.scores[t], (g[:6] * x[:6]).sum(-1))
    assert sal.method == "saliency" and ixg.method == "input_x_gradient"


def test_rollout_is_the_product_of_residual_attention(attributor):
    res = rollout(attributor, PROMPT, text(40, 41))
    ids, x = _inputs(attributor, (40, 41))
    with torch.no_grad():
        out = attributor.model(inputs_embeds=x[None], output_attentions=True)
    n = x.shape[0]
    mats = []
    for a in out.attentions:  # bottom layer first
        a_hat = 0.5 * a[0].mean(0) + 0.5 * torch.eye(n, dtype=a.dtype)
        mats.append(a_hat / a_hat.sum(-1, keepdim=True))
    total = torch.linalg.multi_dot(mats[::-1])  # Â^(L) ⋯ Â^(1)
    torch.testing.assert_close(res.scores, total[[5, 6], :6].double())
    assert res.method == "rollout" and float(res.scores.min()) >= 0


def test_occlusion_is_the_leave_one_out_probability_drop(attributor):
    res = occlusion(attributor, PROMPT, text(40, 41))
    ids, x = _inputs(attributor, (40, 41))
    for t in range(2):
        p = float(_f(attributor, x, 5 + t, ids[6 + t]).exp())
        for i in range(6):
            masked = x.clone()
            masked[i] = 0
            drop = p - float(_f(attributor, masked, 5 + t, ids[6 + t]).exp())
            assert float(res.scores[t, i]) == pytest.approx(drop, abs=1e-10)


def test_heta_variants_equal_engine_runs_with_those_components():
    attr = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=2))
    variants = heta_variants(attr, PROMPT, text(40, 41), ["heta", "heta_flow", "heta_curvature",
                                                          "heta_information", "heta_ungated"])
    comps = {"heta": ("flow", "curvature", "information"), "heta_flow": ("flow",),
             "heta_curvature": ("curvature",), "heta_information": ("information",),
             "heta_ungated": ("curvature", "information")}
    for name, res in variants.items():
        alone = Attributor(attr.model, attr.tokenizer, attr.config.replace(components=comps[name]))
        expected = alone.attribute(PROMPT, text(40, 41))
        torch.testing.assert_close(res.scores, expected.scores)
        assert res.method == name and res.timings["total"] > 0
    assert attr.config.components == ("flow", "curvature", "information")  # the caller's config is untouched


def test_method_names_aliases_and_run_methods():
    assert resolve_methods("heta, ig,IG,rollout,loo") == ["heta", "integrated_gradients", "rollout", "occlusion"]
    assert resolve_methods("all") == list(ALL)
    assert resolve_methods("grid,heta_flow") == list(GRID) + ["heta_flow"]
    assert set(METHODS) == set(ALL) | set(GRID)
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        resolve_methods("saliency,magic")
    attr = Attributor(tiny_model("gpt2"), tiny_tokenizer(), HETAConfig(num_probes=1))
    out = run_methods(attr, PROMPT, text(40), "all", ig_steps=4)
    assert list(out) == list(ALL)
    for name, res in out.items():
        assert isinstance(res, Attribution) and res.method == name and res.scores.shape == (1, 6)
        assert torch.isfinite(res.scores).all()
        assert res.context_tokens == PROMPT.split()
