"""Datasets and span assignment: curated loader, JSONL format, token membership by character offsets."""
import json
from pathlib import Path

import pytest

from heta_fast import HETAConfig, InputError
from heta_fast.engine import Attributor
from heta_fast.evaluate.data import load_curated, load_examples, load_jsonl
from heta_fast.evaluate.runner import prepare_example
from heta_fast.evaluate.spans import tokens_in
from tests.tiny_models import text, tiny_model, tiny_tokenizer

CURATED = Path(__file__).resolve().parents[3] / "shared" / "data" / "curated_qa_100.json"
needs_curated = pytest.mark.skipif(not CURATED.exists(), reason=f"curated set not found at {CURATED}")


@pytest.fixture(scope="module")
def tiny_attributor():
    return Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1))


def _jsonl(tmp_path, *records):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return path


def test_segments_that_share_words_are_assigned_by_offsets(tmp_path, tiny_attributor):
    # Both segments hold w5 and w6; substring matching of token text cannot tell them apart.
    distractor, support = text(5, 6, 7), text(6, 5, 8, 9)
    prompt = f"{distractor} w10 {support} w11 w5"
    path = _jsonl(tmp_path, {"prompt": prompt, "target": "w12", "distractor": distractor, "support": support,
                             "gold": ["w5", "w8"]})
    prep = prepare_example(tiny_attributor, load_jsonl(path)[0])
    assert prep.distractor == [0, 1, 2]
    assert prep.support == [4, 5, 6, 7]
    assert prep.gold == [5, 6]  # gold words are looked up inside the support segment only


def test_subword_pieces_and_whitespace_only_overlap():
    text_ = "ab cdef g"
    offsets = [(0, 2), (2, 4), (4, 7), (7, 9)]  # "ab", " c", "def", " g"
    assert tokens_in(text_, offsets, [(3, 7)]) == [1, 2]  # both pieces of "cdef"
    assert tokens_in(text_, offsets, [(2, 3)]) == []      # only the space of " c"
    assert tokens_in(text_, [(0, 0)] + offsets, [(0, 2)]) == [1]  # a special token (empty span) never counts


def test_jsonl_spans_defaults_and_errors(tmp_path):
    path = _jsonl(tmp_path, "# a comment", "", {"prompt": "w1 w2 w3", "target": " w4", "support": [0, 5],
                                               "gold": [[3, 5]], "target_tokens": 1, "source": "x"})
    ex = load_jsonl(path)[0]
    assert ex.id == "3" and ex.support == (0, 5) and ex.gold == ((3, 5),) and ex.distractor is None
    assert ex.target_tokens == 1 and ex.meta == {"source": "x"}
    bad = [
        ({"prompt": "w1", "target": ""}, "'target'"),
        ({"target": "w1"}, "'prompt'"),
        ({"prompt": "w1 w2", "target": "w3", "support": [1, 99]}, "span"),
        ({"prompt": "w1 w1", "target": "w3", "support": "w1"}, "exactly once"),
        ({"prompt": "w1 w2", "target": "w3", "gold": ["w9"]}, "does not occur"),
        ({"prompt": "w1 w2", "target": "w3", "target_tokens": 0}, "target_tokens"),
    ]
    for rec, match in bad:
        with pytest.raises(InputError, match=match):
            load_jsonl(_jsonl(tmp_path, rec))
    with pytest.raises(InputError, match="d.jsonl:1: not valid JSON"):
        load_jsonl(_jsonl(tmp_path, "{nope"))
    with pytest.raises(InputError, match="duplicate id"):
        record = {"id": "a", "prompt": "w1", "target": "w2"}
        load_jsonl(_jsonl(tmp_path, record, record))
    with pytest.raises(InputError, match="no such data file"):
        load_examples(tmp_path / "missing.jsonl")


@needs_curated
def test_curated_loader_builds_answer_prompts_and_spans():
    examples = load_curated(CURATED)
    assert len(examples) == 100
    raw = json.loads(CURATED.read_text())["examples"]
    for ex, rec in zip(examples, raw):
        assert ex.prompt == rec["input_text"] + "\nAnswer:" and ex.target == " " + rec["answer"]
        assert ex.target_tokens == 1
        assert ex.prompt[slice(*ex.support)] == rec["sciq_support_segment"]
        assert ex.prompt[slice(*ex.distractor)] == rec["narrative_segment"]
        words = {ex.prompt[a:b].lower() for a, b in ex.gold}
        assert words == {w.lower() for w in rec["important_words"]}
        assert all(ex.support[0] <= a < b <= ex.support[1] for a, b in ex.gold)
    assert len(load_examples(CURATED, limit=3)) == 3


@needs_curated
def test_curated_record_with_shared_words_on_the_tiny_tokenizer(tiny_attributor):
    # Record 0: "the" (and "of"-like function words) occur in both segments.
    ex = load_curated(CURATED)[0]
    prep = prepare_example(tiny_attributor, ex)
    words = ex.prompt.split()  # the tiny tokenizer splits on white space (unknown words -> [UNK])
    narrative = ex.prompt[slice(*ex.distractor)].split()
    support = ex.prompt[slice(*ex.support)].split()
    assert prep.distractor == list(range(len(narrative)))
    start = len(narrative) + 1  # after "<s>"
    assert prep.support == list(range(start, start + len(support)))
    assert [words[i].strip(",.").lower() for i in prep.gold] == \
        ["photosynthesis", "primarily", "occurs", "leaves", "plant", "chloroplasts", "capture", "light"]
    assert prep.target_ids.numel() == 1


@needs_curated
@pytest.mark.real_model
def test_curated_spans_on_the_default_tokenizer(default_attributor):
    ex = load_curated(CURATED)[0]
    prep = prepare_example(default_attributor, ex)
    tok = default_attributor.tokenizer
    ids = prep.context_ids.tolist()

    def joined(idx):
        return tok.decode([ids[i] for i in idx]).strip()

    assert joined(prep.distractor) == ex.prompt[slice(*ex.distractor)]
    assert joined(prep.support) == ex.prompt[slice(*ex.support)]
    pieces = [tok.decode([ids[i]]) for i in prep.gold]
    assert "".join(pieces).replace(" ", "").lower().startswith("photosynthesisprimarilyoccurs")
    assert len(pieces) > 8  # "Photosynthesis" (and others) are several sub-word pieces, all counted
    assert tok.decode(prep.target_ids.tolist()) == " leaves"


def _curated_record(**fields):
    """A minimal curated record: support and distractor located in the input text."""
    rec = {"input_text": "Rome is in Italy. Paris is in France. Where is Paris?",
           "narrative_segment": "Rome is in Italy.", "sciq_support_segment": "Paris is in France.", "answer": "France"}
    return {**rec, **fields}


def test_curated_duplicate_ids_and_no_examples_are_refused_as_in_jsonl(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"examples": [_curated_record(id="q1"), _curated_record(id="q2"),
                                             _curated_record(id="q1")]}))
    with pytest.raises(InputError, match=r"c\.json: example 2: duplicate id 'q1'"):
        load_curated(path)
    path.write_text(json.dumps({"examples": []}))
    with pytest.raises(InputError, match=r"c\.json: no examples"):
        load_examples(path)


def test_a_curated_record_without_an_id_is_named_by_its_index_whatever_the_path(tmp_path, monkeypatch):
    path = tmp_path / "c1.json"
    path.write_text(json.dumps({"examples": [_curated_record(), _curated_record(id="q7")]}))
    monkeypatch.chdir(tmp_path)
    assert [ex.id for ex in load_curated("c1.json")] == ["0", "q7"]
    assert [ex.id for ex in load_curated(path)] == ["0", "q7"]


def test_an_important_word_index_outside_the_support_names_the_file_and_example(tmp_path):
    path = tmp_path / "c.json"
    bad = _curated_record(important_word_indices_in_sciq_support=[0, 5])
    path.write_text(json.dumps({"examples": [_curated_record(), bad]}))
    with pytest.raises(InputError, match=r"c\.json: example 1: important word index 5 is outside the support "
                                         r"segment's 4 words"):
        load_curated(path)
