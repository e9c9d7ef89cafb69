"""Evaluation data: the curated distractor set and a JSONL format for user datasets.

Every example is a prompt, a target continuation and, optionally, character spans inside the
prompt: the answer-bearing ``support`` segment, the ``distractor`` segment (both needed for
DSA) and the ``gold`` important words (needed for F1).

JSONL format (one JSON object per line; blank lines and lines starting with ``#`` are skipped)::

    {"id": "q1",                         # optional; default: the line number
     "prompt": "Paris is in France. ...", # required: the text the model reads
     "target": " Paris",                  # required: the continuation attributed, token by token
     "target_tokens": 1,                  # optional: attribute only its first N tokens
     "support": [0, 19],                  # optional: [start, end) character span in the prompt,
                                          #   or the segment's text (must occur exactly once)
     "distractor": "Rome is in Italy.",   # optional: same forms as support
     "gold": ["Paris", [0, 5]]}           # optional: gold important words, each a [start, end)
                                          #   span or a word (all whole-word, case-insensitive
                                          #   occurrences inside the support segment, or inside
                                          #   the prompt when there is no support segment)

The curated set (``curated_qa_100.json``, released by the HETA authors) is read by
:func:`load_curated`: prompt = ``input_text + "\\nAnswer:"``, target = the first token of
``" " + answer`` (the published evaluation attributed the question mark that ends the input
instead), segments located by their text, gold words from the word indices given for the support
segment. :func:`load_examples` reads either format.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..chat import render_chat
from ..errors import InputError
from ..textfiles import decode_utf8, parse_json
from .spans import Span

ANSWER_CUE = "\nAnswer:"


@dataclass(frozen=True)
class EvalExample:
    """One evaluation example; spans are [start, end) character offsets into ``prompt``."""

    id: str
    prompt: str
    target: str
    target_tokens: int | None = None
    support: Span | None = None
    distractor: Span | None = None
    gold: tuple[Span, ...] = ()
    meta: dict = field(default_factory=dict, compare=False)


# ----------------------------------------------------------------------------- curated set
def load_curated(path: str | Path) -> list[EvalExample]:
    """The HETA authors' curated NarrativeQA ⊕ SciQ distractor set (JSON with an ``examples`` list)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise InputError(f"{path}: not a curated dataset (expected a JSON object with an 'examples' list)")
    out, seen = [], set()
    for i, rec in enumerate(data["examples"]):
        where = f"{path}: example {i}"
        out.append(_unique(_curated_example(rec, where, default_id=str(i)), seen, where))
    return _some(out, path)


def _curated_example(rec: dict, where: str, default_id: str) -> EvalExample:
    """One curated record; without an ``id`` its id is ``default_id``, its index in the file (as a
    JSONL record's is its line number): never the path as typed, so that a run given the same file
    by another path continues its results instead of recomputing them under new ids."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: must be a JSON object, got {_json_kind(rec)}")
    fields = ("input_text", "narrative_segment", "sciq_support_segment", "answer")
    missing = [name for name in fields if name not in rec]
    if missing:
        raise InputError(f"{where}: missing field {', '.join(repr(m) for m in missing)}")
    text, narrative, support, answer = (rec[name] for name in fields)
    for name, value in zip(fields[:3], (text, narrative, support)):
        if not isinstance(value, str):
            raise InputError(f"{where}: {name!r} must be a string, got {_json_kind(value)}")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise InputError(f"{where}: 'answer' must be a string or a number, got {_json_kind(answer)}")
    sup = _locate(text, support, f"{where}: support segment")
    indices = rec.get("important_word_indices_in_sciq_support")
    if indices is not None and not (isinstance(indices, list) and all(_is_int(i) for i in indices)):
        raise InputError(f"{where}: 'important_word_indices_in_sciq_support' must be a list of integers")
    gold = _indexed_words(text, sup, indices, where)
    words = rec.get("important_words", [])
    if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
        raise InputError(f"{where}: 'important_words' must be a list of strings")
    if not gold:
        gold = _word_occurrences(text, words, sup)
    return EvalExample(
        id=str(rec.get("id", default_id)), prompt=text + ANSWER_CUE, target=" " + str(answer).strip(),
        target_tokens=1, support=sup, distractor=_locate(text, narrative, f"{where}: distractor segment"),
        gold=tuple(gold), meta={"answer": answer, "question": rec.get("question"), "cue": ANSWER_CUE},
    )


def _indexed_words(text: str, support: Span, indices, where: str) -> list[Span]:
    """Spans of the support segment's whitespace-separated words at ``indices``, punctuation trimmed."""
    if not indices:
        return []
    words = [(m.start() + support[0], m.end() + support[0])
             for m in re.finditer(r"\S+", text[support[0] : support[1]])]
    spans = []
    for i in indices:
        if not 0 <= int(i) < len(words):
            raise InputError(f"{where}: important word index {i} is outside the support segment's {len(words)} words")
        spans.append(_trim(text, words[int(i)]))
    return spans


def _trim(text: str, span: Span) -> Span:
    """Drop leading/trailing punctuation ("plant," -> "plant") so that the comma is not gold."""
    a, b = span
    while a < b and not (text[a].isalnum()):
        a += 1
    while b > a and not (text[b - 1].isalnum()):
        b -= 1
    return (a, b) if a < b else span


# ----------------------------------------------------------------------------- chat prompts
def chat_example(ex: EvalExample, tokenizer) -> EvalExample:
    """``ex`` asked through the model's chat template: its prompt (without the plain-prompt answer
    cue ``meta["cue"]`` that curated examples end with) becomes the one user message, the prompt
    becomes the template's rendering with the generation prompt (:func:`heta_fast.chat.render_chat`),
    and every span moves by the message's offset in that rendering, so it covers the same words.

    ``meta["message"]`` is the message's [start, end) span in the new prompt. The new prompt must
    tokenise, as a plain prompt, to the template's own ids: the rendering does when the tokenizer
    adds no special tokens of its own, the rendering without its leading BOS text does when the
    template writes the BOS the tokenizer adds (:func:`_as_plain_prompt`); otherwise ``InputError``.
    """
    cue = ex.meta.get("cue")
    content = ex.prompt[: -len(cue)] if cue and ex.prompt.endswith(cue) else ex.prompt
    if any(span[1] > len(content) for span in (ex.support, ex.distractor, *ex.gold) if span):
        raise InputError(f"example {ex.id}: a span reaches into the answer cue {cue!r}")
    chat = render_chat(tokenizer, [{"role": "user", "content": content}])
    # The template may strip the content; offsets inside it move by where its stripped text starts.
    shown = content.strip()
    if chat.text.count(shown) != 1:
        raise InputError(f"example {ex.id}: the message occurs {chat.text.count(shown)} times in the chat "
                         "rendering; its spans cannot be moved")
    shift = chat.text.index(shown) - (len(content) - len(content.lstrip()))
    prompt = _as_plain_prompt(tokenizer, chat)
    shift -= len(chat.text) - len(prompt)

    def move(span: Span | None) -> Span | None:
        return None if span is None else (span[0] + shift, span[1] + shift)

    start = shift + len(content) - len(content.lstrip())
    meta = {**ex.meta, "message": (start, start + len(shown))}
    meta.pop("cue", None)
    return EvalExample(id=ex.id, prompt=prompt, target=ex.target, target_tokens=ex.target_tokens,
                       support=move(ex.support), distractor=move(ex.distractor),
                       gold=tuple(move(g) for g in ex.gold), meta=meta)


def _as_plain_prompt(tokenizer, chat) -> str:
    """The text that, tokenised as a plain prompt (with the tokenizer's own special tokens), gives
    exactly the template's ids: the rendering itself, or, for a template that writes the BOS the
    tokenizer adds anyway (Gemma's), the rendering without that leading BOS text. Anything else
    is an ``InputError``."""
    ids = chat.ids.tolist()
    if tokenizer(chat.text, add_special_tokens=True)["input_ids"] == ids:
        return chat.text
    bos = getattr(tokenizer, "bos_token", None)
    if bos and chat.text.startswith(bos):
        rest = chat.text[len(bos):]
        if tokenizer(rest, add_special_tokens=True)["input_ids"] == ids:
            return rest
    raise InputError("the chat rendering tokenised as a prompt differs from the template's ids (the "
                     "tokenizer adds special tokens); --prompt-format chat cannot be used with this model")


# ----------------------------------------------------------------------------- JSONL
def load_jsonl(path: str | Path) -> list[EvalExample]:
    """User examples in the JSONL format of this module's docstring."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    out, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        ex = _jsonl_example(parse_json(line, where), where, default_id=str(number))
        out.append(_unique(ex, seen, where))
    return _some(out, path)


def _jsonl_example(rec, where: str, default_id: str) -> EvalExample:
    if not isinstance(rec, dict):
        raise InputError(f"{where}: each line must be a JSON object, got {_json_kind(rec)}")
    if "id" in rec and not (isinstance(rec["id"], str) or _is_int(rec["id"])):
        raise InputError(f"{where}: 'id' must be a string or an integer, got {_json_kind(rec['id'])}")
    prompt, target = rec.get("prompt"), rec.get("target")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(target, str) or not target:
        raise InputError(f"{where}: 'target' must be a non-empty string")
    n_target = rec.get("target_tokens")
    if n_target is not None and (not isinstance(n_target, int) or isinstance(n_target, bool) or n_target < 1):
        raise InputError(f"{where}: 'target_tokens' must be an integer >= 1")
    support = _segment(prompt, rec.get("support"), f"{where}: support")
    distractor = _segment(prompt, rec.get("distractor"), f"{where}: distractor")
    gold = []
    if not isinstance(rec.get("gold") or [], list):
        raise InputError(f"{where}: 'gold' must be a list of words and [start, end) spans, "
                         f"got {_json_kind(rec['gold'])}")
    for item in rec.get("gold") or []:
        if isinstance(item, str):
            found = _word_occurrences(prompt, [item], support)
            if not found:
                raise InputError(f"{where}: gold word {item!r} does not occur in the "
                                 f"{'support segment' if support else 'prompt'}")
            gold += found
        else:
            gold.append(_span(prompt, item, f"{where}: gold"))
    known = {"id", "prompt", "target", "target_tokens", "support", "distractor", "gold"}
    return EvalExample(id=str(rec.get("id", default_id)), prompt=prompt, target=target, target_tokens=n_target,
                       support=support, distractor=distractor, gold=tuple(gold),
                       meta={k: v for k, v in rec.items() if k not in known})


def _segment(prompt: str, value, where: str) -> Span | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _locate(prompt, value, where)
    return _span(prompt, value, where)


def _span(prompt: str, value, where: str) -> Span:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not 0 <= value[0] < value[1] <= len(prompt):
        raise InputError(f"{where}: a span must be [start, end) with 0 <= start < end <= {len(prompt)}, got {value!r}")
    return int(value[0]), int(value[1])


# ----------------------------------------------------------------------------- shared
def _unique(ex: EvalExample, seen: set[str], where: str) -> EvalExample:
    """``ex``, its id added to ``seen``; an id seen before is refused (results are kept by id: two
    examples under one id would share, and silently reuse, one set of records)."""
    if ex.id in seen:
        raise InputError(f"{where}: duplicate id {ex.id!r}")
    seen.add(ex.id)
    return ex


def _some(examples: list[EvalExample], path: Path) -> list[EvalExample]:
    """``examples``; a file without any is refused rather than evaluated into an empty table."""
    if not examples:
        raise InputError(f"{path}: no examples")
    return examples


def _locate(text: str, segment: str, where: str) -> Span:
    """The character span of ``segment`` in ``text``; it must occur exactly once."""
    if not segment:
        raise InputError(f"{where} is empty")
    count = text.count(segment)
    if count != 1:
        raise InputError(f"{where} occurs {count} times in the prompt (it must occur exactly once)")
    start = text.index(segment)
    return start, start + len(segment)


def _word_occurrences(text: str, words, within: Span | None) -> list[Span]:
    """Every whole-word, case-insensitive occurrence of each word inside ``within`` (or all of text)."""
    lo, hi = within if within else (0, len(text))
    spans = []
    for word in words:
        pattern = r"(?<!\w)" + re.escape(str(word)) + r"(?!\w)"
        spans += [(m.start() + lo, m.end() + lo) for m in re.finditer(pattern, text[lo:hi], re.IGNORECASE)]
    return sorted(set(spans))


def _read_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is refused naming the first bad byte."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_utf8(raw, path)


def _read_json(path: Path):
    return parse_json(_read_text(path), str(path))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_kind(value) -> str:
    """What a JSON value is, for messages: 'a number (5)', 'a list', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:30]!r})"
    return "a list" if isinstance(value, list) else "an object"


def load_examples(path: str | Path, limit: int | None = None) -> list[EvalExample]:
    """Read a ``.jsonl`` user dataset or a curated-format ``.json`` file; the first ``limit`` examples."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such data file: {path}")
    examples = load_jsonl(path) if path.suffix.lower() in (".jsonl", ".ndjson") else load_curated(path)
    if limit is not None:
        if limit < 1:
            raise InputError("--limit must be >= 1")
        examples = examples[:limit]
    return examples


def select_shard(examples: list[EvalExample], shard: str | None) -> list[EvalExample]:
    """The examples of shard ``"I/N"`` (every N-th example from the I-th, 0-based); all if None.

    N processes (or machines) given shards 0/N … N−1/N together cover every example once; their
    results files are combined with ``heta-fast eval --merge``.
    """
    if shard is None:
        return examples
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/2), got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard I/N needs N >= 1 and 0 <= I < N, got {shard!r}")
    return examples[index::count]
