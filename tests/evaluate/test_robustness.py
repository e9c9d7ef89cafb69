"""Robustness studies (heta_fast/evaluate/robustness/): the paraphrase data, rank statistics,
word alignment, and the embedding-noise hook, against hand-computed cases on tiny models."""
import json
from pathlib import Path

import pytest
import torch

from heta_fast import HETAConfig
from heta_fast.engine import Attributor
from heta_fast.errors import InputError
from heta_fast.evaluate.baselines import saliency, target_gradients
from heta_fast.evaluate.data import EvalExample, load_curated
from heta_fast.evaluate.robustness import (
    Paraphrase,
    attribution_change,
    embedding_noise,
    load_paraphrases,
    noise_sensitivity,
    paraphrased,
    perturbed_embeddings,
    spearman,
    word_scores,
)
from tests.tiny_models import text, tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PARAPHRASES = ROOT / "data" / "paraphrase_curated.json"
CURATED = ROOT.parent / "shared" / "data" / "curated_qa_100.json"
METHODS = ["heta", "saliency", "input_x_gradient", "rollout", "occlusion"]


# ----------------------------------------------------------------------------- the data file
def test_paraphrase_file_is_well_formed():
    items = load_paraphrases(PARAPHRASES)  # checks every content word's counts in both segments
    ids = [i for p in items for i in p.source_ids]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)
    assert "written for heta-fast" in json.loads(PARAPHRASES.read_text())["description"].lower()
    for p in items:
        assert p.rewritten != p.original
        for word in p.content_words:
            assert word in p.original.lower() and word in p.rewritten.lower()


@pytest.mark.skipif(not CURATED.exists(), reason="the curated set (../shared/data) is not beside the repository")
def test_paraphrase_sources_exist_and_their_support_is_the_original():
    records = {r["id"]: r for r in json.loads(CURATED.read_text())["examples"]}
    examples = {ex.id: ex for ex in load_curated(CURATED)}
    for p in load_paraphrases(PARAPHRASES):
        for i in p.source_ids:
            assert i in records, i
            assert records[i]["sciq_support_segment"] == p.original
            assert p.original in records[i]["input_text"]
            ex = paraphrased(examples[i], p)
            assert p.rewritten in ex.prompt and p.original not in ex.prompt
            assert ex.prompt[ex.support[0]: ex.support[1]] == p.rewritten
            assert ex.target == examples[i].target and ex.prompt.endswith("\nAnswer:")


def test_load_paraphrases_refuses_unequal_content_words(tmp_path):
    bad = {"paraphrases": [{"source_ids": ["a"], "original": "cats chase dogs", "rewritten": "dogs are chased",
                            "content_words": ["cats", "dogs"]}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match="'cats' occurs 1 times in the original and 0"):
        load_paraphrases(path)


# ----------------------------------------------------------------------------- statistics
def test_spearman_against_hand_computed_values():
    # no ties: 1 − 6 Σd² / (n(n² − 1)) = 1 − 6·2/60
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 30, 20, 40])) == pytest.approx(0.8)
    # ties share mid-ranks: ranks (1.5, 1.5, 3) against (1, 2, 3) -> 1.5 / √(1.5 · 2)
    assert spearman(torch.tensor([5.0, 5, 7]), torch.tensor([1.0, 2, 3])) == pytest.approx(1.5 / 3 ** 0.5)
    assert spearman(torch.tensor([3.0, 2, 1]), torch.tensor([1.0, 2, 3])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1, 1]), torch.tensor([1.0, 2, 3])) is None


def test_attribution_change_by_hand():
    same = attribution_change(torch.tensor([0.5, -2.0, 1.0]), torch.tensor([0.5, -2.0, 1.0]))
    assert same == pytest.approx({"rank_change": 0.0, "mass_change": 0.0}, abs=1e-12)
    # |s| normalised: (0.25, 0.75) against (0.5, 0.5): TV = ½ (0.25 + 0.25); the signed ranks swap: 1 − (−1)
    moved = attribution_change(torch.tensor([1.0, -3.0]), torch.tensor([2.0, 2.0 + 1e-6]))
    assert moved["mass_change"] == pytest.approx(0.25, abs=1e-6) and moved["rank_change"] == pytest.approx(2.0)
    # the same magnitudes in another order: TV counts the mass that moved; ρ = 1 − 6·2/24
    swapped = attribution_change(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([3.0, 1.0, 0.0]))
    assert swapped["mass_change"] == pytest.approx(0.5) and swapped["rank_change"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- word alignment
def test_word_scores_follow_the_words_not_the_positions():
    tok = tiny_tokenizer()
    p = Paraphrase(("x",), text(9, 13, 20), text(20, 40, 13, 9), ("w9", "w13", "w20"))
    original = text(5) + " " + p.original + " " + text(31)
    ex = EvalExample("x", original, text(50), support=(3, 3 + len(p.original)))
    rewritten = paraphrased(ex, p)
    assert rewritten.prompt == text(5, 20, 40, 13, 9, 31)
    # w5 w9 w13 w20 w31 / w5 w20 w40 w13 w9 w31: each content word keeps its |score|, wherever it moved
    row_a = torch.tensor([7.0, 0.2, -0.3, 0.4, 9.0])
    row_b = torch.tensor([7.0, -0.4, 5.0, 0.3, 0.2, 9.0])
    got_a = word_scores(tok, ex.prompt, tok(ex.prompt)["input_ids"], row_a, ex.support, p.content_words)
    got_b = word_scores(tok, rewritten.prompt, tok(rewritten.prompt)["input_ids"], row_b, rewritten.support,
                        p.content_words)
    assert got_a == pytest.approx([0.2, 0.3, 0.4]) and got_b == pytest.approx([0.2, 0.3, 0.4])
    assert spearman(torch.tensor(got_a), torch.tensor(got_b)) == pytest.approx(1.0)
    # a word occurring twice in the segment gets both occurrences; one outside the segment none
    twice = word_scores(tok, text(9, 9, 13, 9), tok(text(9, 9, 13, 9))["input_ids"], torch.tensor([1.0, -2, 4, 8]),
                        (0, len(text(9, 9, 13))), ["w9"])
    assert twice == pytest.approx([3.0])
    with pytest.raises(InputError, match="not the paraphrase's original"):
        paraphrased(EvalExample("y", text(9, 13, 21), "w1", support=(0, 11)), p)


# ----------------------------------------------------------------------------- embedding noise
@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1, max_batch=8))


def test_noise_scale_is_relative_to_each_rows_rms():
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(3, 4000, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [10.0]])
    noise = embedding_noise(embeds, 0.2, seed=0, key="a")
    rms = embeds.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(noise.std(-1) / rms, torch.full((3,), 0.2, dtype=torch.float64), rtol=0.05, atol=0)
    torch.testing.assert_close(noise, embedding_noise(embeds, 0.2, seed=0, key="a"))  # seeded
    assert not torch.equal(noise, embedding_noise(embeds, 0.2, seed=0, key="b"))
    torch.testing.assert_close(embedding_noise(embeds, 0.4, seed=0, key="a"), 2 * noise)  # one direction per key
    assert float(embedding_noise(embeds, 0.0, seed=0).abs().max()) == 0.0


def test_noise_hook_changes_the_embeddings_and_is_removed(attributor):
    module = attributor.model.get_input_embeddings()
    ids = torch.tensor(tiny_tokenizer()(text(5, 9, 13))["input_ids"])
    clean = attributor.adapter.embed(ids)
    noise = torch.randn(clean.shape, dtype=clean.dtype)
    with perturbed_embeddings(attributor.model, noise):
        torch.testing.assert_close(attributor.adapter.embed(ids), clean + noise)
        torch.testing.assert_close(attributor.adapter.embed(ids[:1]), clean[:1])  # another shape: untouched
    assert not module._forward_hooks
    torch.testing.assert_close(attributor.adapter.embed(ids), clean)
    with pytest.raises(RuntimeError):
        with perturbed_embeddings(attributor.model, noise):
            raise RuntimeError("inside")
    assert not module._forward_hooks


def test_methods_see_the_noise_exactly(attributor):
    prompt, target = text(5, 9, 13, 20, 31, 7), text(40)
    ids = torch.tensor(tiny_tokenizer()(prompt)["input_ids"])
    x = attributor.adapter.embed(ids)
    noise = embedding_noise(x, 0.5, seed=0, key="k")
    with perturbed_embeddings(attributor.model, noise):
        res = saliency(attributor, prompt, target)
    grads = target_gradients(attributor.adapter, x + noise, torch.tensor([5]), torch.tensor([44]))
    torch.testing.assert_close(res.scores[0], grads[0].norm(dim=-1))


def test_zero_noise_changes_nothing_and_noise_changes_every_method(attributor):
    ex = EvalExample("r", text(5, 9, 13, 20, 31, 7, 11, 17), text(40), target_tokens=1)
    out = noise_sensitivity(attributor, ex, METHODS, scales=(0.0, 1.0), seed=0)
    for m in METHODS:
        assert out[m]["0.0"]["rank_change"] == pytest.approx(0.0, abs=1e-12), m
        assert out[m]["0.0"]["mass_change"] == pytest.approx(0.0, abs=1e-12), m
        assert out[m]["1.0"]["mass_change"] > 1e-4, m
    assert not attributor.model.get_input_embeddings()._forward_hooks


def test_reagent_probes_see_the_noise(attributor):
    """ReAGent's batched probe sequences go through the hooked embedding as [B, L] lookups, so each
    probe gets the noise: its probabilities are those of the perturbed embeddings, not the clean ones."""
    from heta_fast.evaluate.baselines.reagent import _probs
    from heta_fast.evaluate.forward import next_token_probs

    ids = torch.tensor(tiny_tokenizer()(text(5, 9, 13, 20, 31, 7))["input_ids"])
    batch = torch.stack([ids, ids.flip(0), ids.roll(2)])  # [3, L]
    x = attributor.adapter.embed(batch)  # [3, L, d]
    noise = embedding_noise(x[0], 1.0, seed=0, key="k")  # [L, d]
    with perturbed_embeddings(attributor.model, noise):
        noisy = _probs(attributor.adapter, batch, max_batch=2)
    torch.testing.assert_close(noisy, next_token_probs(attributor.adapter, x + noise, 2))
    assert (noisy - next_token_probs(attributor.adapter, x, 2)).abs().max() > 1e-6


def test_reagent_changes_under_noise_and_not_without(attributor):
    ex = EvalExample("r", text(5, 9, 13, 20, 31, 7, 11, 17), text(40), target_tokens=1)
    out = noise_sensitivity(attributor, ex, ["reagent"], scales=(0.0, 1.0), seed=0)
    assert out["reagent"]["0.0"]["mass_change"] == pytest.approx(0.0, abs=1e-12)
    assert out["reagent"]["1.0"]["mass_change"] > 1e-4


def _script():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import robustness
    finally:
        sys.path.pop(0)
    return robustness


def test_pooling_joins_methods_run_in_other_files_and_refuses_clashes(tmp_path):
    script = _script()
    header = {"study": "noise", "scales": [0.1]}
    files = {
        "a": {"r1": {"heta": {"x": 1}}, "r2": {"heta": {"x": 2}}},
        "b": {"r1": {"reagent": {"x": 3}}, "r2": {"heta": {"x": 2}}},
    }
    for name, records in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"header": header, "records": records}))
    doc = script.pooled([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert doc["records"] == {"r1": {"heta": {"x": 1}, "reagent": {"x": 3}}, "r2": {"heta": {"x": 2}}}
    (tmp_path / "c.json").write_text(json.dumps({"header": header, "records": {"r2": {"heta": {"x": 5}}}}))
    with pytest.raises(SystemExit, match="different results for heta"):
        script.pooled([str(tmp_path / "a.json"), str(tmp_path / "c.json")])


def test_pooling_a_decoding_record_joins_each_tokens_methods_when_the_draws_agree(tmp_path):
    # ReAGent run later in another process: the same seeded draws, its cells beside the others'.
    script = _script()
    draws = {"greedy": {"token": 7}, "draws": {"t=1": {"0": {"token": 9}}}}

    def record(methods_7, methods_9, **change):
        return {**draws, **change, "distinct_tokens": 2,
                "tokens": {"7": {"text": "A", "p": 0.5, "methods": methods_7},
                           "9": {"text": "B", "p": 0.1, "methods": methods_9}}}

    files = {"d": record({"heta": {"x": 1}}, {"heta": {"x": 2}}),
             "e": record({"reagent": {"x": 3}}, {"reagent": {"x": 4}}),
             "f": record({"heta": {"x": 5}}, {}),
             "g": record({}, {}, draws={"t=1": {"0": {"token": 8}}})}
    for name, rec in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"header": {"study": "decoding"}, "records": {"r1": rec}}))
    doc = script.pooled([str(tmp_path / "d.json"), str(tmp_path / "e.json")])
    tokens = doc["records"]["r1"]["tokens"]
    assert tokens["7"]["methods"] == {"heta": {"x": 1}, "reagent": {"x": 3}}
    assert tokens["9"]["methods"] == {"heta": {"x": 2}, "reagent": {"x": 4}}
    with pytest.raises(SystemExit, match="different results for heta"):
        script.pooled([str(tmp_path / "d.json"), str(tmp_path / "f.json")])
    with pytest.raises(SystemExit, match="drew different answers"):
        script.pooled([str(tmp_path / "d.json"), str(tmp_path / "g.json")])
