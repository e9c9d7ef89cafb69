"""heta_fast.compat: the published interface over the engine."""
import pytest
import torch

from heta_fast.compat import HETA, AttributionResult, HETAConfig, build_windows, mask_token_embedding, resolve_device
from tests.tiny_models import text, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("kwargs", [dict(beta=-1), dict(gamma=-0.5), dict(mask_scheme="nope"),
                                    dict(num_hvp_samples=0), dict(window_overlap=1.5)])
def test_invalid_config_is_both_value_and_assertion_error(kwargs):
    with pytest.raises(ValueError):
        HETAConfig(**kwargs)
    with pytest.raises(AssertionError):
        HETAConfig(**kwargs)


def test_window_options_reach_the_engine_and_change_the_result():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompt = text(5, 9, 13, 2, 7, 11, 4, 8, 3)
    windowed = HETA(model, tok, HETAConfig(num_hvp_samples=2, dtype="float64", window_size=4, window_overlap=0.5))
    cfg = windowed._attributor.config
    assert (cfg.window_size, cfg.window_overlap) == (4, 0.5)
    res = windowed.attribute(prompt)
    engine = windowed._attributor.attribute(text(5, 9, 13, 2, 7, 11, 4, 8), text(3))
    torch.testing.assert_close(res.scores, engine.scores[0])
    plain = HETA(model, tok, HETAConfig(num_hvp_samples=2, dtype="float64")).attribute(prompt)
    assert not torch.allclose(res.kl_divergence, plain.kl_divergence)  # the early tokens see shorter inputs


def test_attribute_defaults_to_the_last_token_and_matches_the_engine():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    heta = HETA(model, tok, HETAConfig(num_hvp_samples=2, dtype="float64"))
    res = heta.attribute(text(5, 9, 13, 2))
    assert isinstance(res, AttributionResult)
    assert res.tokens == ["w5", "w9", "w13"] and res.target_token == "w2" and res.target_position == 3
    engine = heta._attributor.attribute(text(5, 9, 13), text(2))
    torch.testing.assert_close(res.scores, engine.scores[0])
    torch.testing.assert_close(res.hessian_sensitivity, engine.curvature[0])
    torch.testing.assert_close(res.kl_divergence, engine.information[0])
    torch.testing.assert_close(res.semantic_flow, engine.flow[0])
    top = res.topk(2)
    assert len(top) == 2 and top[0][1] >= top[1][1] and isinstance(top[0][0], str)


def test_curvature_options_map_onto_the_engine():
    assert HETAConfig().to_engine().estimator == "exact"  # the published estimator
    low = HETAConfig(low_rank=16, use_fisher=True, layer_subset=1).to_engine()
    assert (low.estimator, low.sketch_rank, low.use_fisher, low.layer_subset) == ("sketch", 16, True, 1)


def test_target_pos_and_target_token_id():
    heta = HETA(tiny_model("gpt2"), tiny_tokenizer(), HETAConfig(num_hvp_samples=1, dtype="float64"))
    res = heta.attribute(text(5, 9, 13, 2), target_pos=2, target_token_id=40)
    assert res.tokens == ["w5", "w9"] and res.target_token == "w36" and res.target_position == 2
    batch = heta.attribute_batch([text(5, 9, 13), text(7, 8)], target_positions=[None, 1])
    assert [r.target_position for r in batch] == [2, 1]


def test_build_windows():
    assert build_windows(10, 0, 0.5) == [(0, 10)]
    assert build_windows(10, 10, 0.5) == [(0, 10)]
    assert build_windows(10, 4, 0.5) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert build_windows(11, 4, 0.5)[-1] == (8, 11)
    assert build_windows(5, 3, 0.99) == [(0, 3), (1, 4), (2, 5)]  # stride never below 1


def test_mask_token_embedding_copies():
    e = torch.arange(12.0).reshape(1, 4, 3)
    z = mask_token_embedding(e, 1, "zero")
    assert torch.equal(z[0, 1], torch.zeros(3)) and torch.equal(e[0, 1], torch.tensor([3.0, 4.0, 5.0]))
    m = mask_token_embedding(e, 2, "mean")
    assert torch.equal(m[0, 2], e[0].mean(0)) and torch.equal(m[0, 0], e[0, 0])


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # parsed, not opened
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
