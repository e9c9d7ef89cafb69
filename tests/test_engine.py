"""The Attributor on tiny random models: its fast paths against the reference, and its API."""
import pytest
import torch

from heta_fast import Attribution, Attributor, FailedAttribution, HETAConfig
from heta_fast.errors import InputError
from heta_fast.reference import attribute_reference, information_reference
from tests.tiny_models import ARCHITECTURES, text, tiny_model, tiny_tokenizer

PROMPT = text(10, 3, 44, 7, 21, 9)
TARGET = text(30, 12)


def _attributor(arch="llama", **cfg):
    cfg.setdefault("num_probes", 3)
    cfg.setdefault("estimator", "exact")  # compared with the reference loop below
    return Attributor(tiny_model(arch), tiny_tokenizer(), HETAConfig(**cfg))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_engine_equals_reference_for_every_component(arch):
    attr = _attributor(arch, max_batch=4)
    res = attr.attribute(PROMPT, TARGET)
    ids = torch.tensor(res.context_ids + res.target_ids[:-1])
    n_ctx = len(res.context_ids)
    adapter = attr.adapter
    x = adapter.embed(ids)
    positions = torch.arange(len(res.target_ids)) + n_ctx - 1
    ref = attribute_reference(adapter, x, positions, torch.tensor(res.target_ids), n_ctx,
                              torch.zeros(n_ctx, x.shape[-1], dtype=x.dtype), num_probes=3, seed=0)
    torch.testing.assert_close(res.flow, ref["flow"])
    # Batched vs one-at-a-time differ only by float64 rounding (float32 inside GPT-J's attention).
    tol = dict(rtol=1e-5, atol=1e-7) if arch == "gptj" else dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(res.curvature, ref["curvature"], **tol)
    torch.testing.assert_close(res.information, ref["information"], **tol)
    torch.testing.assert_close(res.scores, ref["scores"], **tol)
    torch.testing.assert_close(res.scores, res.flow * (0.5 * res.curvature + 0.5 * res.information))


def test_shapes_and_tokens_for_several_targets():
    res = _attributor().attribute(PROMPT, TARGET)
    assert res.scores.shape == (2, 6)
    assert res.context_tokens == PROMPT.split() and res.target_tokens == TARGET.split()
    for comp in (res.flow, res.curvature, res.information):
        assert comp.shape == (2, 6) and torch.all(comp >= 0)


def test_second_target_row_is_conditioned_on_the_first_target_token():
    attr = _attributor()
    both = attr.attribute(PROMPT, TARGET)
    second_alone = attr.attribute(PROMPT + " " + TARGET.split()[0], TARGET.split()[1])
    torch.testing.assert_close(both.information[1], second_alone.information[0, :6])


def test_ids_and_text_requests_agree():
    attr = _attributor(components=("flow", "information"))
    by_text = attr.attribute(PROMPT, TARGET)
    by_ids = attr.attribute(by_text.context_ids, by_text.target_ids)
    torch.testing.assert_close(by_text.scores, by_ids.scores)


@pytest.mark.parametrize("components", [("flow",), ("curvature",), ("information",), ("curvature", "information")])
def test_components_left_out_are_not_computed(components):
    res = _attributor(components=components).attribute(PROMPT, TARGET)
    for name in ("flow", "curvature", "information"):
        assert (getattr(res, name) is None) == (name not in components)
        assert (name in res.timings) == (name in components)
    if components == ("flow",):
        torch.testing.assert_close(res.scores, res.flow)
    if components == ("curvature", "information"):
        torch.testing.assert_close(res.scores, 0.5 * res.curvature + 0.5 * res.information)


def test_same_seed_same_numbers_other_seed_other_curvature():
    a = _attributor(seed=5).attribute(PROMPT, TARGET)
    b = _attributor(seed=5).attribute(PROMPT, TARGET)
    c = _attributor(seed=6).attribute(PROMPT, TARGET)
    assert torch.equal(a.scores, b.scores)
    assert not torch.equal(a.curvature, c.curvature)


@pytest.mark.parametrize("scheme", ["zero", "mean", "pad", "unk"])
def test_mask_schemes_replace_the_token_embedding(scheme):
    attr = _attributor(components=("information",), mask_scheme=scheme)
    res = attr.attribute(PROMPT, TARGET)
    x = attr.adapter.embed(torch.tensor(res.context_ids + res.target_ids[:-1]))
    n_ctx = 6
    row = {"zero": torch.zeros(16, dtype=x.dtype), "mean": x[:n_ctx].mean(0),
           "pad": attr.model.get_input_embeddings().weight[0].detach(),
           "unk": attr.model.get_input_embeddings().weight[1].detach()}[scheme]
    info = information_reference(attr.adapter, x, torch.tensor([5, 6]), n_ctx, row.expand(n_ctx, 16))
    torch.testing.assert_close(res.information, info)


@pytest.mark.parametrize("prompt,target,match", [
    ("", "w1", "prompt is empty"),
    ("   ", "w1", "prompt is empty"),
    ("w1 w2", "", "target is empty"),
    ("w1 w2", "   ", "tokenises to no tokens"),
    ("w1 " * 70, "w2", "maximum is 64"),
    ([1, 2, 999], [3], "outside the vocabulary"),
])
def test_bad_requests_raise_input_errors(prompt, target, match):
    with pytest.raises(InputError, match=match):
        _attributor().attribute(prompt, target)


def test_attribute_many_keeps_order_and_isolates_failures():
    attr = _attributor(components=("flow", "information"))
    requests = [(PROMPT, TARGET), ("", "w1"), ("w5 w6", "w7"), ("oops",), (PROMPT, "")]
    out = list(attr.attribute_many(requests))
    assert [r.ok for r in out] == [True, False, True, False, False]
    assert isinstance(out[1], FailedAttribution) and out[1].index == 1 and out[1].error_type == "InputError"
    torch.testing.assert_close(out[0].scores, attr.attribute(PROMPT, TARGET).scores)
    torch.testing.assert_close(out[2].scores, attr.attribute("w5 w6", "w7").scores)


def test_generate_and_attribute_attributes_every_generated_token():
    attr = _attributor(components=("flow", "information"))
    res = attr.generate_and_attribute(PROMPT, max_new_tokens=3, min_new_tokens=3)
    assert len(res.target_tokens) == 3 and res.scores.shape == (3, 6) and res.prompt == PROMPT
    with torch.no_grad():
        ids = torch.tensor([res.context_ids])
        greedy = attr.model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)[0, 6:]
    assert res.target_ids == greedy.tolist()


def test_json_round_trip_and_word_aggregation(tmp_path):
    res = _attributor().attribute(PROMPT, TARGET)
    back = Attribution.from_json(res.to_json(tmp_path / "r.json"))
    torch.testing.assert_close(back.scores, res.scores)
    torch.testing.assert_close(back.curvature, res.curvature)
    assert back.context_tokens == res.context_tokens and back.config == res.config
    top = res.topk(3, target=0)
    assert [s for _, _, s in top] == sorted([s for _, _, s in top], reverse=True)
    assert top[0][2] == pytest.approx(float(res.scores[0].max()))


def test_word_aggregation_sums_sub_tokens():
    res = Attribution(scores=torch.tensor([[1.0, 2.0, 3.0, 4.0]]), context_tokens=["The", " pho", "tos", " leaf"],
                      target_tokens=[" x"], flow=torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    words = res.aggregate("words")
    assert words.context_tokens == ["The", " photos", " leaf"]
    torch.testing.assert_close(words.scores, torch.tensor([[1.0, 5.0, 4.0]]))
    torch.testing.assert_close(words.flow, torch.tensor([[0.1, 0.5, 0.4]]))


def test_non_finite_model_output_is_a_typed_error():
    from heta_fast.errors import NonFiniteError

    attr = _attributor()
    with torch.no_grad():
        attr.model.get_input_embeddings().weight[10] = float("nan")
    with pytest.raises(NonFiniteError):
        attr.attribute(text(6, 7), text(8))


def test_a_per_call_config_overrides_the_attributors_for_that_call_only():
    attr = _attributor()
    own = attr.attribute(PROMPT, TARGET)
    flow_only = attr.attribute(PROMPT, TARGET, config=attr.config.replace(components=("flow",)))
    assert flow_only.curvature is None and flow_only.config["components"] == ["flow"]
    torch.testing.assert_close(flow_only.flow, own.flow, rtol=0, atol=0)
    again = attr.attribute(PROMPT, TARGET)  # the Attributor's own config is untouched
    assert attr.config.components == ("flow", "curvature", "information")
    torch.testing.assert_close(again.scores, own.scores, rtol=0, atol=0)
    many = list(attr.attribute_many([(PROMPT, TARGET)], config=attr.config.replace(beta=2.0)))
    torch.testing.assert_close(many[0].scores, own.flow * (2.0 * own.curvature + 0.5 * own.information))


def test_the_result_records_the_models_actual_dtype_and_device():
    res = Attributor(tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), HETAConfig()).attribute(PROMPT, TARGET)
    assert (res.model_dtype, res.device) == ("float32", "cpu")
    assert "dtype" not in res.config and "device" not in res.config
    back = Attribution.from_json(res.to_json())
    assert (back.model_dtype, back.device) == ("float32", "cpu")
    assert _attributor().attribute(PROMPT, TARGET).model_dtype == "float64"


def test_closing_the_attributor_gives_the_model_back_as_it_was():
    model = tiny_model("llama", dtype=torch.float32).train()
    model.set_attn_implementation("sdpa")
    model.lm_head.weight.requires_grad_(True)
    model.model.embed_tokens.weight.requires_grad_(False)
    with Attributor(model, tiny_tokenizer(), HETAConfig()) as attr:
        assert model.config._attn_implementation == "heta_eager" and not model.training
        assert not any(p.requires_grad for p in model.parameters())
        attr.attribute(PROMPT, TARGET)
    assert model.config._attn_implementation == "sdpa" and model.training
    assert model.lm_head.weight.requires_grad and not model.model.embed_tokens.weight.requires_grad
    assert model.model.layers[0].self_attn.q_proj.weight.requires_grad
