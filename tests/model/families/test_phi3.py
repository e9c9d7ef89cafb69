"""Phi-3 / Phi-3.5 / Phi-4 (model_type phi3): fused qkv_proj; Phi-4-mini rotates part of each head
(partial_rotary_factor 0.75) and ties its embeddings; Phi-3.5-mini, Phi-3-128k and Phi-4-mini use
longrope, whose rotary frequencies change with the length of the pass (heta_fast.model.rotary)."""
import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.model.adapter import ModelAdapter
from heta_fast.model.capture import CaptureRequest
from heta_fast.model.rotary import frequency_key, updating_rotaries
from heta_fast.request import tokenize_request
from heta_fast.signals.curvature import curvature
from heta_fast.signals.curvature import group as G
from tests.model.families.checks import assert_engine_matches_reference, assert_rebuilds
from tests.tiny_models import text, tiny_model, tiny_tokenizer

PHI4_MINI = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                 tie_word_embeddings=True)


def longrope(original: int) -> dict:
    """Longrope with short factors up to ``original`` positions, long ones past them."""
    return dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5],
                                 "long_factor": [3.0, 5.0], "original_max_position_embeddings": original},
                original_max_position_embeddings=original)  # Phi3Config's own copy wins over the dict's


def test_phi4_mini_layout_rebuilds_attention():
    model = tiny_model("phi3", **PHI4_MINI)
    assert model.model.rotary_emb.inv_freq.numel() == 1  # 2 of 4 head dimensions rotate
    assert assert_rebuilds(model).spec.name == "phi3"
    assert ModelAdapter(tiny_model("phi3")).spec.name == "phi3"


def test_phi4_mini_layout_engine_equals_reference():
    assert_engine_matches_reference("phi3", **PHI4_MINI)


# The reference's 7 tokens: all short (32), or the capture and the last target long, the first
# target's curvature pass (6 tokens) short (6).
@pytest.mark.parametrize("original", [32, 6])
def test_longrope_engine_equals_reference(original):
    assert updating_rotaries(tiny_model("phi3", **longrope(original)))
    assert_engine_matches_reference("phi3", **longrope(original))


def test_longrope_capture_is_the_models_own_forward():
    model = tiny_model("phi3", **longrope(6))
    ids = torch.arange(4, 13)
    with torch.no_grad():
        own = torch.log_softmax(model(ids[None]).logits[0], dim=-1)
    adapter = ModelAdapter(model)
    assert frequency_key(model, 9) != frequency_key(model, 6)  # the long factors are in use
    cap = adapter.capture(adapter.embed(ids), torch.arange(9), CaptureRequest())
    # transformers' eager softmax runs in float32: equal to ~1e-8 (the frequencies differ by 3x).
    torch.testing.assert_close(cap.log_probs, own, rtol=1e-7, atol=1e-7)


def test_longrope_curvature_group_equals_each_request_alone():
    """Jobs whose lengths straddle the original length run with other frequencies: they never share
    a padded pass (whose length would choose the frequencies for all of them)."""
    adapter = ModelAdapter(tiny_model("phi3", **longrope(8)))
    items = []
    for prompt, target in [(text(*range(5, 15)), text(14, 15)), (text(4, 8, 9), text(9)), (text(3, 7), text(1))]:
        req = tokenize_request(tiny_tokenizer(), prompt, target, adapter.max_length, adapter.vocab_size)
        items.append(G.CurvatureItem(adapter.embed(req.input_ids), req.target_positions, req.target_ids,
                                     req.n_context))
    cfg = HETAConfig(num_probes=2)
    jobs, _ = G._jobs(items, cfg)
    groups = [[j.x.shape[0] for j in g] for g in G._groups(adapter, jobs, cfg)]
    assert groups == [[11, 10], [3, 2]]  # long (> 8 positions) apart from short
    for item, got in zip(items, G.curvature_group(adapter, items, cfg)):
        want = curvature(adapter, item.embeds, item.positions, item.target_ids, item.n_context, cfg)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


@pytest.mark.parametrize("use_fisher", [False, True])
def test_longrope_curvature_runs_under_every_operator(use_fisher):
    from heta_fast import Attributor

    attr = Attributor(tiny_model("phi3", **longrope(4)), tiny_tokenizer(),
                      HETAConfig(num_probes=2, use_fisher=use_fisher))
    res = attr.attribute(text(10, 3, 44, 7, 21, 9), text(30, 12))
    assert torch.isfinite(res.curvature).all() and float(res.curvature.max()) > 0


def test_longrope_curvature_runs_eagerly_on_cuda():
    """A CUDA graph's padded length would choose the frequencies: the graphs are not used."""
    import types

    from heta_fast.signals.curvature.cuda_graphs import graphs_for

    adapter = types.SimpleNamespace(device=torch.device("cuda"), model=tiny_model("phi3", **longrope(4)))
    assert graphs_for(adapter, HETAConfig(cuda_graphs=True), {}) is None


def test_longrope_requests_of_both_regimes_are_not_batched_together():
    """A shared capture pass would run the shorter request with the longer one's frequencies: the
    group is refused, and the engine attributes its requests one at a time (the same numbers)."""
    from heta_fast import Attributor
    from heta_fast.errors import UnsupportedArchitectureError

    attr = Attributor(tiny_model("phi3", **longrope(8)), tiny_tokenizer(), HETAConfig(num_probes=2))
    reqs = [tokenize_request(attr.tokenizer, p, t, attr.adapter.max_length, attr.adapter.vocab_size)
            for p, t in [(text(*range(5, 15)), text(14, 15)), (text(4, 8, 9), text(9))]]
    with pytest.raises(UnsupportedArchitectureError, match="3 and 11 tokens cannot share a pass"):
        attr.adapter.capture_group([attr.adapter.embed(r.input_ids) for r in reqs],
                                   [r.target_positions for r in reqs], CaptureRequest())
    for got, want in zip(attr.attribute_group(reqs, batched=True), attr.attribute_group(reqs, batched=False)):
        for name in ("flow", "curvature", "information"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name))
