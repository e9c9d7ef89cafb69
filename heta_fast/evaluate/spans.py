"""Which prompt tokens belong to a character span (a segment, a gold word).

Membership is decided by character offsets of each token in the prompt, never by comparing
token text with segment text (the published evaluation's substring test put every token whose
text occurs in both segments — "the", "of", "." — on the wrong side).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from ..errors import InputError

Span = tuple[int, int]


def token_offsets(tokenizer, prompt: str, expected_ids: Sequence[int] | None = None) -> list[Span]:
    """Character span [start, end) of every prompt token, tokenised as the engine does.

    Special tokens the tokenizer adds (BOS) get the empty span (0, 0) and belong to no span, and
    so does a sink token the engine put before the prompt (``HETAConfig.sink_token``: then
    ``expected_ids`` is one special token longer). Needs a fast (Rust) tokenizer;
    ``expected_ids`` guards against a tokenisation mismatch.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("segment and gold-word spans need a fast tokenizer (character offsets)")
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    spans = []
    if expected_ids is not None:
        expected, ids = [int(i) for i in expected_ids], list(enc["input_ids"])
        if len(expected) == len(ids) + 1 and expected[0] in special:
            expected, spans = expected[1:], [(0, 0)]
        if ids != expected:
            raise InputError("the tokenizer's offsets do not describe the attributed prompt tokens")
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        spans.append((0, 0) if tid in special and a == b else (int(a), int(b)))
    return spans


def tokens_in(text: str, offsets: Sequence[Span], spans: Iterable[Span]) -> list[int]:
    """Indices of the tokens that share at least one non-whitespace character with any span.

    A word split into several sub-word pieces contributes every piece; a token whose only
    overlap with a span is white space (a leading space) does not count.
    """
    spans = [(int(s), int(e)) for s, e in spans]
    members = []
    for idx, (a, b) in enumerate(offsets):
        for s, e in spans:
            lo, hi = max(a, s), min(b, e)
            if lo < hi and any(not c.isspace() for c in text[lo:hi]):
                members.append(idx)
                break
    return members
