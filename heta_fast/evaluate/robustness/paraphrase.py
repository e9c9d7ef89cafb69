"""Paraphrase: the curated record's support segment is replaced by a hand-written active/passive
rewrite (``data/paraphrase_curated.json``); both prompts are attributed with the same method and
target, each content word present in both segments gets the sum of its tokens' score magnitudes
(every sub-word piece, every whole-word occurrence in the segment; signed methods count |s| as
DSA and F1 do), and the agreement is the Spearman correlation of those word scores.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from ...errors import InputError
from ..data import EvalExample, _read_json, _word_occurrences
from ..methods import run_methods
from ..runner import example_target
from ..spans import Span, token_offsets, tokens_in
from .ranks import spearman


@dataclass(frozen=True)
class Paraphrase:
    """A support segment, its rewrite, the records using it and the content words of both."""

    source_ids: tuple[str, ...]
    original: str
    rewritten: str
    content_words: tuple[str, ...]


def load_paraphrases(path: str | Path) -> list[Paraphrase]:
    """The paraphrase file (``{"paraphrases": [{source_ids, original, rewritten, content_words}]}``),
    checked: the rewrite differs, and every content word occurs (whole word, any case) equally often,
    at least once, in the original and the rewrite."""
    path = Path(path)
    data = _read_json(path)
    items = data.get("paraphrases") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: expected a JSON object with a non-empty 'paraphrases' list")
    out = []
    for k, item in enumerate(items):
        where = f"{path}: paraphrase {k}"
        try:
            p = Paraphrase(tuple(item["source_ids"]), item["original"], item["rewritten"],
                           tuple(w.lower() for w in item["content_words"]))
        except (KeyError, TypeError, AttributeError):
            raise InputError(f"{where}: needs source_ids, original, rewritten and content_words") from None
        if p.original == p.rewritten or not p.source_ids or not p.content_words:
            raise InputError(f"{where}: needs source ids, content words and a rewrite that differs")
        for word in p.content_words:
            counts = [len(_word_occurrences(s, [word], None)) for s in (p.original, p.rewritten)]
            if counts[0] == 0 or counts[0] != counts[1]:
                raise InputError(f"{where}: content word {word!r} occurs {counts[0]} times in the original "
                                 f"and {counts[1]} times in the rewrite")
        out.append(p)
    return out


def paraphrased(ex: EvalExample, p: Paraphrase) -> EvalExample:
    """The example with its support segment (which must read ``p.original``) replaced by the rewrite.

    Only the prompt and the support span change; the distractor and gold spans are dropped (they
    would move).
    """
    if ex.support is None or ex.prompt[ex.support[0]: ex.support[1]] != p.original:
        raise InputError(f"example {ex.id}: its support segment is not the paraphrase's original")
    a, b = ex.support
    prompt = ex.prompt[:a] + p.rewritten + ex.prompt[b:]
    return replace(ex, prompt=prompt, support=(a, a + len(p.rewritten)), distractor=None, gold=())


def word_scores(tokenizer, prompt: str, context_ids: Sequence[int], row: torch.Tensor, segment: Span,
                words: Sequence[str]) -> list[float]:
    """row [n_context] -> per word: Σ |s| over the tokens of its whole-word occurrences in ``segment``."""
    offsets = token_offsets(tokenizer, prompt, context_ids)
    mag = row.detach().double().abs()
    out = []
    for word in words:
        idx = tokens_in(prompt, offsets, _word_occurrences(prompt, [word], segment))
        if not idx:
            raise InputError(f"content word {word!r} has no token in the segment")
        out.append(float(mag[idx].sum()))
    return out


def paraphrase_agreement(attributor, ex: EvalExample, p: Paraphrase, methods: Sequence[str],
                         ig_steps: int = 32) -> dict[str, dict]:
    """Per method: the Spearman of the content words' scores, original against rewritten prompt
    (first target row), with both word-score lists and the attribution seconds."""
    rewritten = paraphrased(ex, p)
    target = example_target(attributor, ex)
    runs = [run_methods(attributor, e.prompt, target, methods, ig_steps=ig_steps) for e in (ex, rewritten)]
    out = {}
    for m in methods:
        scores = [word_scores(attributor.tokenizer, e.prompt, r[m].context_ids, r[m].scores[0], e.support,
                              p.content_words) for e, r in zip((ex, rewritten), runs)]
        rho = spearman(torch.tensor(scores[0]), torch.tensor(scores[1]))
        out[m] = {"spearman": rho, "words": list(p.content_words), "original": scores[0], "rewritten": scores[1],
                  "seconds": [float(r[m].timings.get("total", 0.0)) for r in runs]}
    return out
