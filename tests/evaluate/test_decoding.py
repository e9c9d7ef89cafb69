"""The decoding study (issue 17 §6): the sampler (heta_fast/evaluate/sampling.py) against hand
computations, the per-(record, token, method) cache, and the table arithmetic on a hand-made file."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.engine import Attributor
from heta_fast.errors import ConfigError
from heta_fast.evaluate.answer import greedy_answer
from heta_fast.evaluate.data import EvalExample
from heta_fast.evaluate.robustness import TokenCache, decoding_sensitivity, decoding_summary
from heta_fast.evaluate.robustness import decoding as decoding_study
from heta_fast.evaluate.sampling import (
    Decoding,
    generator_for,
    penalised,
    sample_token,
    sampled_answer,
    sampling_probs,
)
from tests.tiny_models import text, tiny_model, tiny_tokenizer

NONE = torch.tensor([], dtype=torch.long)


def logits_of(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def support(probs: torch.Tensor) -> set[int]:
    return {int(i) for i in torch.nonzero(probs > 0).flatten()}


# ----------------------------------------------------------------------------- one step, by hand
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    z = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0])
    got = penalised(z, torch.tensor([0, 1, 1, 3]), 2.0)  # every distinct seen id once, 2 and 4 unseen
    torch.testing.assert_close(got, torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(penalised(z, torch.tensor([0, 1]), 1.0), z.double())
    # the penalty comes before everything else: the seen favourite loses top-1 to the unseen runner-up
    d = Decoding(top_k=1, repetition_penalty=4.0)
    probs = sampling_probs(torch.tensor([3.0, 2.0, 0.1]), torch.tensor([0]), d)  # [0.75, 2, 0.1]
    assert support(probs) == {1}
    greedy = Decoding("greedy", 0.0, repetition_penalty=4.0)
    assert sample_token(torch.tensor([3.0, 2.0, 0.1]), torch.tensor([0]), greedy, None) == 1


def test_temperature_scales_the_logits():
    z = torch.tensor([1.0, 0.0, -1.0])
    for tau in (0.5, 1.0, 2.0):
        want = torch.softmax(z.double() / tau, dim=-1)
        torch.testing.assert_close(sampling_probs(z, NONE, Decoding(temperature=tau)), want)
    # a higher temperature flattens: the favourite's probability falls
    p = [float(sampling_probs(z, NONE, Decoding(temperature=t))[0]) for t in (0.7, 1.0, 1.3)]
    assert p[0] > p[1] > p[2]


def test_top_k_keeps_the_k_largest_ties_to_the_lower_id():
    z = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0])
    assert support(sampling_probs(z, NONE, Decoding(top_k=2))) == {1, 3}
    assert support(sampling_probs(z, NONE, Decoding(top_k=1))) == {1}
    assert support(sampling_probs(z, NONE, Decoding(top_k=3))) == {1, 2, 3}
    assert support(sampling_probs(z, NONE, Decoding(top_k=0))) == {0, 1, 2, 3, 4}  # 0: off
    p = sampling_probs(z, NONE, Decoding(top_k=3))
    want = torch.softmax(torch.tensor([3.0, 2.0, 3.0], dtype=torch.float64), dim=-1)
    torch.testing.assert_close(p[[1, 2, 3]], want)


def test_top_p_keeps_the_smallest_set_reaching_p():
    z = logits_of([0.125, 0.5, 0.125, 0.25])  # sorted: 1 (0.5), 3 (0.25), 0 (0.125), 2 (0.125)
    cases = {0.3: {1}, 0.5: {1}, 0.6: {1, 3}, 0.75: {1, 3}, 0.8: {0, 1, 3}, 0.875: {0, 1, 3}, 0.9: {0, 1, 2, 3},
             1.0: {0, 1, 2, 3}}
    for p, want in cases.items():
        assert support(sampling_probs(z, NONE, Decoding(top_p=p))) == want, p
    torch.testing.assert_close(sampling_probs(z, NONE, Decoding(top_p=0.75)),
                               torch.tensor([0.0, 2 / 3, 0.0, 1 / 3], dtype=torch.float64))
    # after the temperature: τ = 0.5 squares and renormalises, 0.25 / 0.34375 = 0.727 for token 1
    assert support(sampling_probs(z, NONE, Decoding(top_p=0.7))) == {1, 3}
    assert support(sampling_probs(z, NONE, Decoding(temperature=0.5, top_p=0.7))) == {1}
    assert support(sampling_probs(z, NONE, Decoding(temperature=0.5, top_p=0.75))) == {1, 3}


def test_sampling_is_the_inverse_cdf_of_one_uniform():
    z = logits_of([0.2, 0.5, 0.3])  # order 1, 2, 0; cumulative 0.5, 0.8, 1.0
    for seed in range(20):
        u = float(torch.rand((), generator=generator_for(seed, "r"), dtype=torch.float64))
        want = 1 if u < 0.5 else 2 if u < 0.8 else 0
        assert sample_token(z, NONE, Decoding(), generator_for(seed, "r")) == want
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_token(z, NONE, Decoding(), g) for _ in range(3000)])
    freq = torch.bincount(draws, minlength=3).double() / 3000
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), atol=0.03, rtol=0)


def test_greedy_is_the_argmax_and_draws_nothing():
    z = torch.tensor([0.1, 2.0, 2.0, -1.0])
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert sample_token(z, NONE, Decoding(temperature=0.0), g) == 1  # tie: lowest id
    assert sample_token(z, NONE, Decoding("greedy", temperature=1.3), g) == 1  # named greedy
    assert torch.equal(g.get_state(), state)
    assert Decoding.parse("greedy").greedy and not Decoding.parse("temperature=0.7").greedy


def test_decoding_parse_and_checks():
    d = Decoding.parse("top_p=0.9, top_k=50")
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.name) == (1.0, 0.9, 50, 1.0, "top_p=0.9, top_k=50")
    assert Decoding.parse("repetition-penalty=1.2").repetition_penalty == 1.2
    for bad in ("top_p=0", "temperature=-1", "top_k=1.5", "beam=3", "top_p="):
        with pytest.raises((ConfigError, ValueError)):
            Decoding.parse(bad)


# ----------------------------------------------------------------------------- whole answers, tiny model
@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1, max_batch=8))


def test_sampled_answers_on_a_tiny_model(attributor):
    ids = torch.tensor(tiny_tokenizer()(text(5, 9, 13, 20))["input_ids"])
    model = attributor.adapter
    greedy = greedy_answer(model, ids, 6, set())
    for seed in range(3):  # top-k 1 and temperature 0 are greedy, whatever the seed
        assert torch.equal(sampled_answer(model, ids, 6, set(), top_k=1, seed=seed).ids, greedy.ids)
        assert torch.equal(sampled_answer(model, ids, 6, set(), temperature=0.0, seed=seed).ids, greedy.ids)
    a = sampled_answer(model, ids, 6, set(), temperature=1.3, seed=1, key="r1")
    assert torch.equal(a.ids, sampled_answer(model, ids, 6, set(), temperature=1.3, seed=1, key="r1").ids)
    assert len(a.ids) == 6
    torch.testing.assert_close(a.first_probs, greedy.first_probs)
    torch.testing.assert_close(a.first_sampling_probs, torch.softmax(a.first_probs.log() / 1.3, dim=-1))
    # other seeds or other records draw other answers (a random tiny model is near uniform over 64 ids)
    others = {tuple(sampled_answer(model, ids, 6, set(), temperature=1.3, seed=s, key=k).ids.tolist())
              for s in range(3) for k in ("r1", "r2")}
    assert len(others) == 6
    # stopping after a stop token: the stop token is the answer's last
    stop = {int(a.ids[2])}
    short = sampled_answer(model, ids, 6, stop, temperature=1.3, seed=1, key="r1")
    first_stop = min(i for i, t in enumerate(a.ids.tolist()) if t in stop)
    assert short.ids.tolist() == a.ids[: first_stop + 1].tolist()


# ----------------------------------------------------------------------------- the study and its cache
def test_a_token_is_attributed_once_per_record_and_method(attributor, monkeypatch):
    calls = []
    real = decoding_study.run_methods

    def counting(attr, prompt, target, methods, ig_steps=32):
        calls.append((int(target[0]), tuple(methods)))
        return real(attr, prompt, target, methods, ig_steps=ig_steps)

    monkeypatch.setattr(decoding_study, "run_methods", counting)
    ex = EvalExample("r", text(5, 9, 13, 20, 31, 7), text(40), target_tokens=1)
    cache = TokenCache()
    # greedy, top-k 1 and temperature 0 all draw the greedy token: one attribution per method in all
    out = decoding_sensitivity(attributor, ex, ["saliency", "rollout"], ["top_k=1", "temperature=0"], [0, 1],
                               max_new_tokens=3, cache=cache)
    greedy = out["greedy"]["token"]
    assert all(d["token"] == greedy for draws in out["draws"].values() for d in draws.values())
    assert out["distinct_tokens"] == 1 and out["computed"] == 2 and calls == [(greedy, ("saliency", "rollout"))]
    cell = cache.entries["r"][str(greedy)]["methods"]["saliency"]
    assert set(cell["metrics"]) == {"soft_nc", "soft_ns", "comprehensiveness", "sufficiency", "dsa", "f1"}
    assert cell["metrics"]["soft_nc"] is not None and cell["metrics"]["dsa"] is None  # no segments here
    # sampling: every distinct token once; a second call on the same cache computes nothing
    calls.clear()
    out = decoding_sensitivity(attributor, ex, ["saliency", "rollout"], ["temperature=1.3"], [0, 1, 2, 3],
                               max_new_tokens=2, cache=cache)
    tokens = {out["greedy"]["token"]} | {d["token"] for d in out["draws"]["temperature=1.3"].values()}
    assert out["distinct_tokens"] == len(tokens) == len(cache.entries["r"])
    assert len(calls) == len(tokens) - 1 == len({t for t, _ in calls})  # the greedy token was cached
    calls.clear()
    again = decoding_sensitivity(attributor, ex, ["saliency", "rollout"], ["temperature=1.3"], [0, 1, 2, 3],
                                 max_new_tokens=2, cache=cache)
    assert calls == [] and again["computed"] == 0 and again["draws"] == out["draws"]
    # a new method is computed for the cached tokens only
    decoding_sensitivity(attributor, ex, ["saliency", "occlusion"], ["temperature=1.3"], [0, 1, 2, 3],
                         max_new_tokens=2, cache=cache)
    assert sorted(calls) == sorted((t, ("occlusion",)) for t in tokens)


def test_chat_study_samples_after_the_template_and_scores_the_same_words():
    """``--prompt-format chat``: the study's records are the chat rewrites (segments on the same
    words), and every draw continues the template's ids, generation prompt included."""
    from heta_fast.chat import render_chat
    from tests.test_chat import chat_tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import robustness as script
    finally:
        sys.path.pop(0)
    tok = chat_tokenizer()
    attributor = Attributor(tiny_model("llama"), tok, HETAConfig(num_probes=1, max_batch=8))
    prompt = text(5, 9, 13, 20, 31, 7)
    records = [EvalExample(i, prompt, text(40), support=(prompt.index("w13"), len(prompt)),
                           distractor=(0, prompt.index(" w13")), meta={"answer": "w40"}) for i in ("a", "b", "c")]
    plain = script.study_examples(records, "decoding", {}, tok, "plain", 1, 3)
    assert [ex.id for ex in plain] == ["b", "c"] and plain[0] is records[1]
    chat = script.study_examples(records, "decoding", {}, tok, "chat", 1, 3)
    ex = chat[0]
    rendered = render_chat(tok, [{"role": "user", "content": prompt}])
    assert ex.prompt == rendered.text and ex.prompt[slice(*ex.support)] == prompt[slice(*records[1].support)]
    assert ex.prompt[slice(*ex.distractor)] == prompt[slice(*records[1].distractor)]
    cache = TokenCache()
    out = decoding_sensitivity(attributor, ex, ["saliency"], ["temperature=1.3"], [0, 1], max_new_tokens=3,
                               cache=cache)
    expected = greedy_answer(attributor.adapter, rendered.ids, 3, set())
    assert out["greedy"]["token"] == int(expected.ids[0])
    # the segments were found in the chat prompt, so the segment metrics are defined for every token
    assert all(t["methods"]["saliency"]["metrics"]["dsa"] is not None for t in cache.entries["b"].values())
    paraphrase = script.study_examples(records, "paraphrase", {"c": object()}, tok, "chat")
    assert [r.id for r in paraphrase] == ["c"]


# ----------------------------------------------------------------------------- the table arithmetic
def _cell(value):
    return {"metrics": {"dsa": value, "f1": None}, "first_mass": 0.1, "seconds": 0.0}


def _record(greedy, s0, s1, values, gold=(True, True, False)):
    """values: token -> (heta dsa, saliency dsa); gold: whether the greedy, seed-0 and seed-1 answers hold it."""
    return {"greedy": {"token": greedy, "contains_gold": gold[0]},
            "draws": {"a": {"0": {"token": s0, "contains_gold": gold[1]},
                            "1": {"token": s1, "contains_gold": gold[2]}}},
            "distinct_tokens": len(values),
            "tokens": {str(t): {"text": "x", "methods": {"heta": _cell(h), "saliency": _cell(s)}}
                       for t, (h, s) in values.items()}}


RECORDS = {
    # r1: greedy 1, seed 0 draws 1, seed 1 draws 2; r2: greedy 3, seed 0 draws 4, seed 1 draws 3
    "r1": _record(1, 1, 2, {1: (0.5, 0.2), 2: (0.6, 0.4)}),
    "r2": _record(3, 4, 3, {3: (0.3, 0.2), 4: (0.3, 0.6)}, gold=(False, False, False)),
}


def test_decoding_summary_by_hand():
    s = decoding_summary(RECORDS, ["heta", "saliency"], ["dsa", "f1"], ["a"], [0, 1], resamples=200)
    heta, sal = s["metrics"]["heta", "dsa"], s["metrics"]["saliency", "dsa"]
    # heta: greedy (0.5 + 0.3)/2 = 0.4; seed 0 (0.5 + 0.3)/2 = 0.4 -> 0; seed 1 (0.6 + 0.3)/2 = 0.45 -> 0.125
    assert heta["greedy"] == pytest.approx(0.4) and heta["records"] == 2
    assert heta["cells"]["a"]["0"] == pytest.approx({"mean": 0.4, "relative": 0.0, "absolute": 0.0})
    assert heta["cells"]["a"]["1"] == pytest.approx({"mean": 0.45, "relative": 0.125, "absolute": 0.05})
    assert heta["max"] == pytest.approx(0.125) and heta["argmax"] == ("a", "1")
    assert heta["max_abs"] == pytest.approx(0.05)
    # saliency: greedy 0.2; seed 0 (0.2 + 0.6)/2 = 0.4 -> 1.0 (0.2); seed 1 (0.4 + 0.2)/2 = 0.3 -> 0.5 (0.1)
    assert sal["max"] == pytest.approx(1.0) and sal["argmax"] == ("a", "0") and sal["max_abs"] == pytest.approx(0.2)
    assert sal["versus_heta"]["diff"] == pytest.approx(0.875) and sal["versus_heta"]["records"] == 2
    assert sal["versus_heta"]["abs_diff"] == pytest.approx(0.15)
    lo, hi = sal["abs_ci"]
    assert 0.0 <= lo <= 0.2 <= hi  # resampling r1 alone: 0.2; r2 alone: 0.4
    lo, hi = heta["ci"]
    assert 0.0 <= lo <= hi and math.isfinite(hi)
    assert ("heta", "f1") not in s["metrics"]  # None everywhere: no records, no row
    # r1 seed 1 and r2 seed 0 changed: half; two distinct first tokens in each record
    # answers holding the gold answer: r1's seed 0 of the four draws; r1's greedy answer of two
    assert s["tokens"]["a"] == pytest.approx({"changed": 0.5, "distinct": 2.0, "contains_gold": 0.25})
    assert s["greedy_contains_gold"] == pytest.approx(0.5)
    # a record missing a method's value is left out of that method only
    partial = json.loads(json.dumps(RECORDS))
    del partial["r2"]["tokens"]["4"]["methods"]["saliency"]
    s = decoding_summary(partial, ["heta", "saliency"], ["dsa"], ["a"], [0, 1], resamples=50)
    assert s["metrics"]["heta", "dsa"]["records"] == 2 and s["metrics"]["saliency", "dsa"]["records"] == 1
    assert s["metrics"]["saliency", "dsa"]["max"] == pytest.approx(1.0)  # r1 alone: 0.2 -> 0.4 at seed 1


def test_decoding_table_prints(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import robustness as script
    finally:
        sys.path.pop(0)
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"header": {"study": "decoding", "grid": ["a"], "seeds": [0, 1]}, "records": RECORDS}))
    script.table([str(path)])
    out = capsys.readouterr().out
    assert "| heta | dsa | 2 | 0.4000 | 12.5% [" in out and "| saliency | dsa | 2 | 0.2000 | 100.0% [" in out
    assert "| 0.2000 [" in out and "; +0.1500 [" in out  # the absolute table (saliency), paired with heta
    assert "+87.5 [" in out and "| a | 0.50 | 2.00 | 0.25 |" in out and "| greedy | — | 1.00 | 0.50 |" in out
