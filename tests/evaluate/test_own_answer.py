"""The model's own answer in `heta-fast eval`: greedy targets, the contains-gold rule, chat-format
prompts whose spans still cover the same words, unchanged defaults and the correct-subset tables."""
import json

import pytest
import torch

from heta_fast import HETAConfig, InputError
from heta_fast.cli import main
from heta_fast.engine import Attributor
from heta_fast.evaluate import runner
from heta_fast.evaluate.answer import GreedyAnswer, answer_span, contains_answer, greedy_answer, normalise
from heta_fast.evaluate.data import EvalExample, chat_example, load_curated, load_jsonl
from heta_fast.evaluate.runner import EvalSettings, prepare_example, run_evaluation
from heta_fast.evaluate.summary import correct_records, summarise
from tests.test_chat import chat_tokenizer
from tests.tiny_models import text, tiny_model, tiny_tokenizer

# A template that writes a system turn of its own before the user's (as SmolLM2's does), so that
# the user's words move in the rendering: "[BOS] w1 w2 w3 [EOS] [BOS] w4 <content> [EOS] [BOS] w9".
TEMPLATE = ("[BOS] w1 w2 w3 [EOS] {% for m in messages %}[BOS] w4 {{ m['content'] }} [EOS] {% endfor %}"
            "{% if add_generation_prompt %}[BOS] w9{% endif %}")
SETTINGS = dict(samples=2, fractions=(0.5,), metrics=("soft_nc", "dsa", "f1"))


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), chat_tokenizer(TEMPLATE), HETAConfig(num_probes=1))


@pytest.fixture
def data(tmp_path):
    recs = [{"id": "a", "prompt": text(5, 6, 7, 8, 9, 10, 11), "target": text(13), "distractor": text(5, 6),
             "support": text(8, 9, 10), "gold": ["w9", "w10"]},
            {"id": "b", "prompt": text(15, 16, 17, 18, 19), "target": text(21, 22), "distractor": [0, 7],
             "support": text(17, 18), "gold": [[8, 11]]}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return path


def _argmax_answer(model, ids: torch.Tensor, steps: int) -> list[int]:
    """Independent greedy decoding: a full forward of the growing sequence per step, no cache."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=ids[None]).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([token])])
    return out


def test_greedy_answer_is_the_models_argmax_and_stops(attributor):
    context = torch.tensor([5, 9, 14, 20, 7])
    expected = _argmax_answer(attributor.model, context, 6)
    own = greedy_answer(attributor.adapter, context, 6, stop=set())
    assert own.ids.tolist() == expected
    probs = torch.softmax(attributor.model(input_ids=context[None]).logits[0, -1].double(), -1)
    torch.testing.assert_close(own.first_probs, probs.detach())
    stop_at = expected.index(expected[2]) + 1  # stops after the first occurrence of the stop token, kept
    assert greedy_answer(attributor.adapter, context, 6, stop={expected[2]}).ids.tolist() == expected[:stop_at]
    ids = context
    for k, token in enumerate(expected):  # each token's probability given the context and the answer before it
        p = torch.softmax(attributor.model(input_ids=ids[None]).logits[0, -1].double(), -1)[token]
        assert float(own.token_probs[k]) == pytest.approx(float(p), rel=1e-5)
        ids = torch.cat([ids, torch.tensor([token])])


@pytest.mark.parametrize("answer, gold, held", [
    ("The leaves.", "leaves", True), ("LEAVES of the plant", "Leaves", True),
    ("the  red\nblood cells", "Red blood cells", True),
    ("red-blood cells", "red blood cells", True), ("a leaf", "leaves", False), ("the cells", "cell", False),
    ("cellular", "cell", False), ("about 100 m", 100, True), ("1000", 100, False), ("anything", " ?! ", False),
    ("Évaporation", "évaporation", True),
])
def test_contains_gold_rule(answer, gold, held):
    assert contains_answer(answer, gold) is held
    chars = _Characters(answer)  # the answer word is found where and only where the rule holds
    span = answer_span(chars, list(range(len(answer))), gold)
    assert (span is not None) is held
    if held:
        assert normalise(answer[span[0]:span[1]]) == normalise(gold)


class _Characters:
    """A tokenizer whose token i is character i of one text."""

    def __init__(self, text):
        self.text = text

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.text[i] for i in ids)


def _words(prompt: str, spans) -> list[str]:
    return [prompt[a:b] for a, b in spans]


def test_chat_spans_cover_the_same_words_and_tokens(attributor, data):
    tok = attributor.tokenizer
    for ex in load_jsonl(data):
        chat = chat_example(ex, tok)
        assert chat.prompt == f"[BOS] w1 w2 w3 [EOS] [BOS] w4 {ex.prompt} [EOS] [BOS] w9"
        for before, after in ((ex.support, chat.support), (ex.distractor, chat.distractor)):
            assert chat.prompt[after[0]:after[1]] == ex.prompt[before[0]:before[1]]
        assert _words(chat.prompt, chat.gold) == _words(ex.prompt, ex.gold)
        prep = prepare_example(attributor, ex, EvalSettings(prompt_format="chat"))
        names = tok.convert_ids_to_tokens(prep.context_ids.tolist())
        # The user's words sit after the template's 7 tokens ([BOS] w1 w2 w3 [EOS] [BOS] w4).
        plain = prepare_example(attributor, ex)
        assert [names[i] for i in prep.gold] == [tok.convert_ids_to_tokens([int(plain.context_ids[i])])[0]
                                                 for i in plain.gold]
        assert prep.support == [i + 7 for i in plain.support] and prep.distractor == [i + 7 for i in plain.distractor]
        assert prep.message == list(range(7, 7 + len(plain.context_ids)))


def test_chat_drops_the_curated_answer_cue_and_follows_trimming_templates(tmp_path):
    rec = {"input_text": text(5, 6, 7, 8, 9, 10), "narrative_segment": text(5, 6), "sciq_support_segment": text(8, 9),
           "answer": "w9", "important_word_indices_in_sciq_support": [1]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"examples": [rec]}))
    ex = load_curated(path)[0]
    chat = chat_example(ex, chat_tokenizer(TEMPLATE))
    assert "Answer" not in chat.prompt and _words(chat.prompt, chat.gold) == ["w9"]
    trimming = chat_tokenizer(TEMPLATE.replace("m['content']", "m['content'] | trim"))
    padded = EvalExample("p", "  " + text(5, 6, 7), text(8), support=(5, 7), distractor=(2, 4), gold=((8, 10),))
    moved = chat_example(padded, trimming)
    assert _words(moved.prompt, [moved.support, moved.distractor, *moved.gold]) == ["w6", "w5", "w7"]
    with pytest.raises(InputError, match="no chat template"):
        chat_example(padded, tiny_tokenizer())


def test_greedy_target_is_the_answers_first_token(attributor, data):
    ex = load_jsonl(data)[0]
    prep = prepare_example(attributor, ex, EvalSettings(prompt_format="chat", target="greedy", max_new_tokens=3))
    chat_ids = prep.context_ids
    first = _argmax_answer(attributor.model, chat_ids, 3)
    assert prep.target_ids.tolist() == first[:1]
    probs = torch.softmax(attributor.model(input_ids=chat_ids[None]).logits[0, -1].double(), -1)
    assert prep.answer["p_target"] == pytest.approx(float(probs.max()))
    answer = first[: first.index(3) + 1] if 3 in first else first  # 3: [EOS], the tiny models' stop token
    assert prep.answer["tokens"] == len(answer) and prep.answer["gold"] == "w13"
    words = attributor.tokenizer.decode(answer, skip_special_tokens=True).split()
    assert prep.answer["text"].split() == words and prep.answer["contains_gold"] == ("w13" in words)
    gold = prepare_example(attributor, ex, EvalSettings(prompt_format="chat"))
    w13 = attributor.tokenizer.convert_tokens_to_ids("w13")
    assert gold.target_ids.tolist() == [w13] and gold.answer["p_target"] == pytest.approx(float(probs[w13]))


def test_defaults_are_plain_prompts_and_gold_targets(attributor, data, tmp_path):
    examples = load_jsonl(data)
    store = run_evaluation(attributor, examples, ["rollout"], tmp_path / "r.json", EvalSettings(**SETTINGS),
                           progress=False)
    header = json.loads((tmp_path / "r.json").read_text())["header"]
    assert header["answer"] == {"prompt_format": "plain", "target": "gold", "max_new_tokens": 16}
    assert "prompt_format" not in header["settings"]  # files written before these options continue
    rec = {r["example"]: r for r in store.records}
    assert rec["a"]["target_tokens"] == ["w13"] and rec["b"]["target_tokens"] == ["w21", "w22"]
    assert rec["a"]["n_context"] == 7 and "template_mass" not in rec["a"]["diagnostics"]
    assert set(rec["a"]["answer"]) == {"text", "tokens", "gold", "contains_gold", "target_token", "p_target"}
    with pytest.raises(InputError, match="settings.prompt_format: None != 'chat'"):
        run_evaluation(attributor, examples, ["rollout"], tmp_path / "r.json",
                       EvalSettings(prompt_format="chat", **SETTINGS), progress=False)


def test_chat_greedy_run_records_answers_and_template_mass(attributor, data, tmp_path):
    settings = EvalSettings(prompt_format="chat", target="greedy", max_new_tokens=4, **SETTINGS)
    store = run_evaluation(attributor, load_jsonl(data), ["saliency"], tmp_path / "r.json", settings, progress=False)
    header = json.loads((tmp_path / "r.json").read_text())["header"]
    assert header["settings"]["prompt_format"] == "chat" and header["settings"]["target"] == "greedy"
    for r in store.records:
        assert r["ok"] and r["n_context"] > 7 and len(r["target_tokens"]) == 1
        assert r["target_tokens"][0] == r["answer"]["target_token"]
        scores = torch.tensor(r["scores"][0]).abs()
        assert r["diagnostics"]["template_mass"] == pytest.approx(float(scores[:7].sum() + scores[-3:].sum()
                                                                         ) / float(scores.sum()))


def _record(example, method, correct, dsa):
    answer = None if correct is None else {"contains_gold": correct}
    return {"example": example, "method": method, "ok": True, "seconds": 1.0, "answer": answer,
            "metrics": {"dsa": dsa}, "diagnostics": {"first_mass": 0.5}}


def test_correct_subset_counts():
    records = [_record("x", "heta", True, 0.4), _record("x", "rollout", True, 0.1),
               _record("y", "heta", False, 0.9), _record("y", "rollout", False, 0.9),
               _record("z", "heta", True, 0.2), _record("z", "rollout", True, 0.3),
               {"example": "w", "method": "heta", "ok": False}]
    sub = correct_records(records)
    assert {(r["example"], r["method"]) for r in sub} == {("x", "heta"), ("x", "rollout"), ("z", "heta"),
                                                           ("z", "rollout")}
    by = {s.method: s for s in summarise(sub)}
    assert by["heta"].n == 2 and by["heta"].metrics["dsa"][0] == pytest.approx(0.3)
    assert by["rollout"].n == 2 and by["rollout"].metrics["dsa"][0] == pytest.approx(0.2)
    assert correct_records([dict(r, answer=None) for r in records]) is None  # files from before answers


def test_cli_prints_both_tables_with_their_counts(tiny_model_dir, data, tmp_path, capsys):
    out, md = tmp_path / "r.json", tmp_path / "t.md"
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout", "--metrics", "dsa",
            "--max-new-tokens", "2", "--out", str(out), "--markdown", str(md), "--no-progress"]
    assert main(args) == 0
    records = json.loads(out.read_text())["records"]
    n_correct = sum(r["answer"]["contains_gold"] for r in records)
    printed = capsys.readouterr().out
    assert "\n2 examples;" in printed
    assert f"correctly answered (the greedy answer contains the gold answer): {n_correct} of 2 examples" in printed
    assert md.read_text().startswith("| method | n |") and "correctly answered" in md.read_text()
    assert main(args[:7] + ["--out", str(tmp_path / "x.json"), "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be >= 1" in capsys.readouterr().err


def _ids(tok, *words: int) -> list[int]:
    return tok.convert_tokens_to_ids([f"w{w}" for w in words])


@pytest.mark.parametrize("answer, gold, span", [
    ((5, 13, 7), "w13", (1, 2)), ((5, 13, 7), "W13 w7", (1, 3)), ((13,), "w13", (0, 1)),
    ((13, 5, 13), "w13", (0, 1)),  # the first occurrence
    ((5, 7), "w13", None), ((5, 7), "w7 w5", None), ((5, 7), " ", None),
])
def test_answer_span_is_the_gold_answers_first_occurrence(answer, gold, span):
    tok = tiny_tokenizer()
    assert answer_span(tok, _ids(tok, *answer), gold) == span


def test_answer_span_starts_a_split_word_at_its_first_piece():
    class Pieces:  # "photos" + "ynthesis" decode to one word; the word starts at the first piece
        pieces = {0: "The", 1: " photos", 2: "ynthesis", 3: "."}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids)

    assert answer_span(Pieces(), [0, 1, 2, 3], "photosynthesis") == (1, 3)
    assert answer_span(Pieces(), [0, 1, 2, 3], "photos") is None


def _scripted(tok, words, monkeypatch):
    """Make the runner's greedy answer the given words followed by [EOS], with made-up probabilities."""
    ids = torch.tensor(_ids(tok, *words) + [tok.eos_token_id])
    probs = torch.linspace(0.9, 0.5, len(ids), dtype=torch.float64)
    monkeypatch.setattr(runner, "greedy_answer", lambda *a, **k: GreedyAnswer(ids, torch.zeros(64), probs))
    return ids, probs


def test_answer_word_target_continues_the_prompt_with_the_answers_words(attributor, data, monkeypatch):
    ex = load_jsonl(data)[0]  # gold answer w13
    ids, probs = _scripted(attributor.tokenizer, (7, 8, 13, 9), monkeypatch)
    gold = prepare_example(attributor, ex, EvalSettings(prompt_format="chat"))
    prep = prepare_example(attributor, ex, EvalSettings(prompt_format="chat", target="answer_word"))
    assert prep.context_ids.tolist() == gold.context_ids.tolist() + ids[:2].tolist()  # "w7 w8" before the word
    assert prep.target_ids.tolist() == ids[2:3].tolist() and prep.answer["target_token"] == "w13"
    assert prep.answer["word_start"] == 2 and prep.answer["p_target"] == pytest.approx(float(probs[2]))
    assert prep.answer["contains_gold"] and prep.answer["text"] == "w7 w8 w13 w9"
    # The segments are the same tokens as with the gold target; the answer's words are context too.
    assert (prep.support, prep.distractor, prep.gold, prep.message) == \
        (gold.support, gold.distractor, gold.gold, gold.message)
    assert prep.example.prompt == gold.example.prompt + " w7 w8"


def test_answer_word_target_fails_an_answer_without_the_gold_answer_alone(attributor, data, monkeypatch, tmp_path):
    examples = load_jsonl(data)  # gold answers w13 and w21 w22
    _scripted(attributor.tokenizer, (5, 21, 22), monkeypatch)
    settings = EvalSettings(prompt_format="chat", target="answer_word", **SETTINGS)
    store = run_evaluation(attributor, examples, ["saliency"], tmp_path / "r.json", settings, progress=False)
    rec = {r["example"]: r for r in store.records}
    assert not rec["a"]["ok"] and rec["a"]["error"].startswith("InputError: example a: the model's answer")
    assert "does not contain the gold answer 'w13'" in rec["a"]["error"]
    assert rec["b"]["ok"] and rec["b"]["target_tokens"] == ["w21"] and rec["b"]["answer"]["word_start"] == 1


def test_cli_says_which_examples_failed_and_why(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    _scripted(tok, (5, 21, 22), monkeypatch)  # holds example b's gold answer (w21 w22), not a's (w13)
    out, md = tmp_path / "r.json", tmp_path / "t.md"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout,saliency",
                 "--metrics", "dsa", "--target", "answer_word", "--out", str(out), "--markdown", str(md), "-q"]) == 0
    printed = capsys.readouterr().out
    line = "1 of 2 examples have failed records (InputError ×1; each record's 'error' in"
    assert line in printed and line in md.read_text()
    assert "e.g. InputError: example a: the model's answer" in printed


def _bos_adding_tokenizer(template: str):
    """The tiny tokenizer with a chat template, adding [BOS] before every text it tokenises with
    special tokens (as Gemma's does)."""
    from tokenizers import processors

    tok = chat_tokenizer(template)
    bos = tok.convert_tokens_to_ids("[BOS]")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", bos)])
    assert tok("w5")["input_ids"] == [bos, tok.convert_tokens_to_ids("w5")]
    return tok


def test_chat_with_a_template_that_writes_the_bos_the_tokenizer_adds(data):
    from heta_fast.chat import render_chat

    tok = _bos_adding_tokenizer("[BOS] {% for m in messages %}w4 {{ m['content'] }} [EOS] {% endfor %}"
                                "{% if add_generation_prompt %}w9{% endif %}")
    attributor = Attributor(tiny_model("llama"), tok, HETAConfig(num_probes=1))
    for ex in load_jsonl(data):
        chat = chat_example(ex, tok)
        # The prompt leaves the BOS to the tokenizer, so a plain tokenisation gives the template's ids.
        assert chat.prompt == f" w4 {ex.prompt} [EOS] w9"
        template_ids = render_chat(tok, [{"role": "user", "content": ex.prompt}]).ids
        prep = prepare_example(attributor, ex, EvalSettings(prompt_format="chat"))
        assert torch.equal(prep.context_ids, template_ids)
        plain = prepare_example(attributor, ex)  # [BOS] and the words; in the chat: [BOS] w4 and the words
        assert prep.support == [i + 1 for i in plain.support] and prep.distractor == [i + 1 for i in plain.distractor]
        assert _words(chat.prompt, chat.gold) == _words(ex.prompt, ex.gold)
    # A template without the BOS the tokenizer adds: the plain tokenisation has one token more.
    no_bos = _bos_adding_tokenizer("{% for m in messages %}w4 {{ m['content'] }} [EOS] {% endfor %}")
    with pytest.raises(InputError, match="differs from the template's ids"):
        chat_example(load_jsonl(data)[0], no_bos)
