"""The combination Attr = M ⊙ (β σ(S) + γ σ(I)) and the term scales σ (heta_fast/combine.py)."""
import pytest
import torch

from heta_fast import Attributor, ConfigError, HETAConfig
from heta_fast.combine import combine, scale_term
from tests.tiny_models import text, tiny_model, tiny_tokenizer

ROW = torch.tensor([[2.0, 0.0, 6.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)


def test_scales_by_hand():
    assert torch.equal(scale_term(ROW, "raw"), ROW)
    assert torch.equal(scale_term(ROW, "max")[0], torch.tensor([1 / 3, 0, 1, 1 / 3], dtype=torch.float64))
    assert torch.equal(scale_term(ROW, "simplex")[0], torch.tensor([0.2, 0, 0.6, 0.2], dtype=torch.float64))
    # ranks 0-based: 0.0 -> 0, the two 2.0 share (1 + 2) / 2, 6.0 -> 3; divided by n - 1 = 3
    assert torch.allclose(scale_term(ROW, "rank")[0], torch.tensor([0.5, 0, 1, 0.5], dtype=torch.float64))
    for how in ("max", "simplex", "rank"):
        assert torch.equal(scale_term(ROW, how)[1], torch.zeros(4, dtype=torch.float64))  # zeros stay zeros


def test_scales_only_over_attributed_columns():
    keep = torch.tensor([True, False, True, True])
    assert torch.allclose(scale_term(ROW, "rank", keep)[0], torch.tensor([0.25, 0, 1, 0.25], dtype=torch.float64))
    assert torch.allclose(scale_term(ROW, "simplex", keep)[0], torch.tensor([0.2, 0, 0.6, 0.2], dtype=torch.float64))
    one = torch.tensor([False, False, True, False])
    assert torch.equal(scale_term(ROW, "rank", one)[0], torch.tensor([0, 0, 1, 0], dtype=torch.float64))


def test_raw_is_the_papers_formula_and_scales_are_invariant_to_units():
    m, s, i = torch.rand(2, 5), torch.rand(2, 5) * 1e4, torch.rand(2, 5) * 1e-2
    assert torch.equal(combine(m, s, i, 0.5, 0.5), m * (0.5 * s + 0.5 * i))
    for how in ("max", "simplex", "rank"):
        # A term's unit (S ~ 1e4, I ~ 1e-2) no longer decides how much it weighs.
        assert torch.allclose(combine(m, s, i, 0.5, 0.5, how), combine(m, s * 7.0, i / 3.0, 0.5, 0.5, how))


def test_the_engine_combines_the_scaled_terms():
    att = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(estimator="exact", num_probes=2))
    raw = att.attribute(text(3, 4, 5, 6), text(7, 8))
    for how in ("max", "simplex", "rank"):
        res = att.attribute(text(3, 4, 5, 6), text(7, 8), config=att.config.replace(term_scale=how))
        assert torch.equal(res.curvature, raw.curvature) and torch.equal(res.information, raw.information)
        expected = raw.flow * (0.5 * scale_term(raw.curvature, how) + 0.5 * scale_term(raw.information, how))
        assert torch.allclose(res.scores, expected, rtol=1e-12, atol=0)
    with pytest.raises(ConfigError, match="term_scale"):
        HETAConfig(term_scale="log")
