"""Errors that the config and the request's sizes decide arrive before any model pass: the
special token a mask scheme or sink option uses (the tokenizer has it, the model can embed it)
and the memory budget of every stage (the same MemoryBudgetError, only earlier)."""
import pytest
import torch

from heta_fast import Attributor, HETAConfig
from heta_fast.cli import main
from heta_fast.errors import ConfigError, MemoryBudgetError
from heta_fast.request import tokenize_request
from heta_fast.signals.information import mask_vectors
from tests.test_bad_input import _one_line_exit_2
from tests.tiny_models import VOCAB, text, tiny_model, tiny_tokenizer

PROMPT, TARGET = text(*range(5, 17)), text(20, 21)


def _tokenizer(words: list[str], **specials):
    """A word-level tokenizer over ``words`` (id = index) with the given special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def _specials_after_the_vocabulary():
    """Ids 0..63 are words (the model's vocabulary), PAD / UNK / BOS / EOS are ids 64..67."""
    return _tokenizer([f"w{i}" for i in range(VOCAB)] + ["[PAD]", "[UNK]", "[BOS]", "[EOS]"], pad_token="[PAD]",
                      unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


def _without_pad_or_unk():
    return _tokenizer(["w0", "w1", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(4, VOCAB)], bos_token="[BOS]",
                      eos_token="[EOS]")


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", dtype=torch.float32)


def _no_model_pass(attr: Attributor, monkeypatch) -> list:
    """Fail the test on any model pass of ``attr``; returns the list its progress events go to."""
    def forbidden(*args, **kwargs):
        pytest.fail("a model pass ran before the error")

    for name in ("embed", "capture", "capture_group"):
        monkeypatch.setattr(attr.adapter, name, forbidden)
    return []


# ----------------------------------------------------------------------------- special tokens
@pytest.mark.parametrize("option,value,name,token_id", [
    ("mask_scheme", "pad", "PAD", 64), ("mask_scheme", "unk", "UNK", 65),
    ("sink_token", "bos", "BOS", 66), ("sink_token", "eos", "EOS", 67),
])
def test_a_special_token_beyond_the_vocabulary_is_a_config_error_before_any_work(model, monkeypatch, option, value,
                                                                                  name, token_id):
    attr = Attributor(model, _specials_after_the_vocabulary(), HETAConfig(num_probes=1))
    events = _no_model_pass(attr, monkeypatch)
    config = HETAConfig(num_probes=1, **{option: value})
    message = (f"{option}='{value}' but the tokenizer's {name} token '[{name}]' has id {token_id}, outside the "
               f"model's vocabulary of {VOCAB} tokens [0, {VOCAB})")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        attr.attribute("w1 w2 w3", " w4", config=config, progress=events.append)
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        attr.estimate("w1 w2 w3", " w4", config=config)
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        attr.attribute_many([("w1 w2 w3", " w4")], config=config)
    assert events == []


def test_a_special_token_beyond_the_vocabulary_is_one_line_at_the_cli(model, tmp_path, capsys):
    model.save_pretrained(tmp_path)
    _specials_after_the_vocabulary().save_pretrained(tmp_path)
    capsys.readouterr()  # saving's progress bar
    for option, value in (("--mask-scheme", "pad"), ("--sink-token", "bos")):
        code = main(["attribute", "--model", str(tmp_path), "--prompt", "w1 w2 w3", "--target", " w4", "-q",
                     option, value])
        _one_line_exit_2(code, capsys.readouterr().err, "outside the model's vocabulary of 64 tokens")


@pytest.mark.parametrize("scheme", ["pad", "unk"])
def test_a_mask_token_the_tokenizer_lacks_is_a_config_error_before_any_work(model, monkeypatch, scheme):
    attr = Attributor(model, _without_pad_or_unk(), HETAConfig(num_probes=1))
    events = _no_model_pass(attr, monkeypatch)
    config = HETAConfig(num_probes=1, mask_scheme=scheme)
    match = f"mask_scheme='{scheme}' but the tokenizer has no {scheme.upper()} token; choose another mask_scheme"
    with pytest.raises(ConfigError, match=match):
        attr.attribute("w4 w5 w6", " w7", config=config, progress=events.append)
    with pytest.raises(ConfigError, match=match):
        attr.attribute_dataset([{"prompt": "w4 w5 w6", "target": " w7"}], config=config)
    assert events == []


def test_mask_vectors_checks_its_token_by_the_same_rule(model):
    """Callers of mask_vectors other than the engine (the occlusion baseline) get the same errors."""
    x = torch.zeros(3, model.config.hidden_size)
    with pytest.raises(ConfigError, match="mask_scheme='pad' but the tokenizer has no PAD token"):
        mask_vectors("pad", x, model.get_input_embeddings(), _without_pad_or_unk())
    with pytest.raises(ConfigError, match="has id 65, outside the model's vocabulary of 64 tokens"):
        mask_vectors("unk", x, model.get_input_embeddings(), _specials_after_the_vocabulary())
    row = mask_vectors("unk", x, model.get_input_embeddings(), tiny_tokenizer())[0]
    assert torch.equal(row, model.get_input_embeddings().weight[1])


# ----------------------------------------------------------------------------- memory budget
@pytest.fixture(scope="module")
def attr(model):
    return Attributor(model, tiny_tokenizer(), HETAConfig(num_probes=2))


@pytest.mark.parametrize("options,budget,match", [
    ({}, 1, "one curvature probe over 12 tokens needs about"),
    # Window 0's probes fit; window 1's first operator (10 tokens) does not.
    (dict(estimator="probing", window_size=5, window_overlap=0.0), 40_000, "one curvature probe over 10 tokens"),
    (dict(estimator="sketch", sketch_rank=40, window_size=6), 60_000, "the sketch of rank 40 over 6 tokens"),
    (dict(components=("flow", "information")), 30_000, "cannot hold one masked variant of the information term"),
])
def test_a_request_over_the_memory_budget_fails_before_any_model_pass(model, monkeypatch, options, budget, match):
    attr = Attributor(model, tiny_tokenizer(), HETAConfig(num_probes=2))
    events = _no_model_pass(attr, monkeypatch)
    with pytest.raises(MemoryBudgetError, match=match):
        attr.attribute(PROMPT, TARGET, config=HETAConfig(num_probes=2, memory_budget=budget, **options),
                       progress=events.append)
    assert events == []


@pytest.mark.parametrize("options", [
    dict(estimator="exact"), dict(estimator="exact", window_size=4, window_overlap=0.5),
    dict(estimator="probing", window_size=5, window_overlap=0.0),
    dict(estimator="sketch", sketch_rank=40, window_size=6),
    dict(estimator="exact", layer_subset=1), dict(estimator="exact", use_fisher=True),
])
def test_the_early_budget_error_is_the_one_the_curvature_raises(attr, options):
    """The engine's early check and the curvature's own checks (run here after its model passes)
    agree: the same MemoryBudgetError, word for word, or none."""
    from heta_fast.signals.curvature import curvature

    request = tokenize_request(attr.tokenizer, PROMPT, TARGET, None, VOCAB)
    embeds = attr.adapter.embed(request.input_ids)
    for budget in (1, 20_000, 30_000, 40_000, 60_000, 100_000, 10**6):
        config = HETAConfig(num_probes=2, memory_budget=budget, components=("curvature",), **options)
        errors = []
        for run in (lambda: attr.attribute(PROMPT, TARGET, config=config),
                    lambda: curvature(attr.adapter, embeds, request.target_positions, request.target_ids,
                                      request.n_context, config)):
            try:
                run()
                errors.append(None)
            except MemoryBudgetError as exc:
                errors.append(str(exc))
        assert errors[0] == errors[1], (budget, errors)


def test_a_group_with_a_request_over_the_budget_runs_the_others(attr, monkeypatch):
    """Batched, the request over the budget fails before the shared forward pass, and the group
    goes one by one: that request is its own failure row, the other is attributed."""
    pairs = ((PROMPT, TARGET), (text(5, 6), text(7)))
    requests = [tokenize_request(attr.tokenizer, p, t, None, VOCAB) for p, t in pairs]
    config = HETAConfig(num_probes=2, memory_budget=40_000, estimator="probing", window_size=5, window_overlap=0.0,
                        components=("flow", "curvature"))
    alone = attr.attribute(*pairs[1], config=config)
    monkeypatch.setattr(attr.adapter, "capture_group", lambda *a, **k: pytest.fail("the shared forward pass ran"))
    over, fits = attr.attribute_group(requests, config, batched=True)
    assert not over.ok and over.error_type == "MemoryBudgetError" and "over 10 tokens" in over.message
    assert fits.ok and torch.equal(fits.scores, alone.scores)


@pytest.mark.parametrize("tokenizer,options,match", [
    (_without_pad_or_unk, {"mask_scheme": "pad"}, "mask_scheme='pad' but the tokenizer has no PAD token"),
    (_specials_after_the_vocabulary, {"sink_token": "eos"}, "sink_token='eos' but .* has id 67, outside"),
])
def test_the_service_refuses_such_options_at_admission(model, tokenizer, options, match):
    """`heta-fast serve` checks the same rule when it admits a request: one 422 naming the options,
    not a job that fails in the worker."""
    from heta_fast.service.admit import Admission, RequestError
    from heta_fast.service.schema import AttributionRequest
    from heta_fast.service.settings import ServiceSettings

    admission = Admission(Attributor(model, tokenizer(), HETAConfig(num_probes=1)), ServiceSettings())
    body = AttributionRequest.model_validate({"prompt": "w4 w5", "target": " w6", "options": options})
    with pytest.raises(RequestError, match=f"options: {match}") as caught:
        admission.admit(body)
    assert caught.value.status == 422


def test_the_mask_token_is_checked_only_where_the_information_term_runs(model):
    """mask_scheme names a token only the information term uses: without that term, a tokenizer
    lacking the token is no reason to refuse the request."""
    attr = Attributor(model, _without_pad_or_unk(), HETAConfig(num_probes=1))
    res = attr.attribute("w4 w5 w6", " w7", config=HETAConfig(num_probes=1, mask_scheme="pad",
                                                                 components=("flow", "curvature")))
    assert res.information is None and torch.isfinite(res.scores).all()
