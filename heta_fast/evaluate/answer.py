"""The model's own answer: a greedy continuation of the prompt, and whether it holds the gold answer.

``heta-fast eval --target greedy`` attributes the first token of this answer (the token the model
actually produces) instead of the first token of the gold answer; ``--target answer_word``
attributes the token where the gold answer begins inside the model's answer, with the answer's
words before it as context (:func:`answer_span`). Every run records the answer, so that the
metrics can also be reported on the correctly answered examples alone.

Containment rule (:func:`contains_answer`): both texts are lower-cased, every run of characters
that are not letters or digits becomes one space; the answer holds the
gold answer when the normalised gold answer occurs in it as a run of whole words ("the leaves."
holds "Leaves"; "leaves" does not hold "leaf", "cells" does not hold "cell").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..model.cache_kwargs import cache_kwargs
from ..model.exclusive import holding_the_model
from .forward import as_model

_NON_ALNUM = re.compile(r"[\W_]+")  # anything but letters and digits (any script)


@dataclass(frozen=True)
class GreedyAnswer:
    """ids [k] (1 <= k <= max_new_tokens; the stop token, when reached, is the last one);
    first_probs [V]: float64 next-token distribution at the end of the context; token_probs [k]:
    float64 probability of each generated token given everything before it."""

    ids: torch.Tensor
    first_probs: torch.Tensor
    token_probs: torch.Tensor


def stop_ids(attributor) -> set[int]:
    """End-of-turn / end-of-sequence ids: the generation config's EOS id(s) and the tokenizer's."""
    out = set()
    config = getattr(as_model(attributor.adapter), "generation_config", None)
    for eos in (getattr(config, "eos_token_id", None), attributor.tokenizer.eos_token_id):
        if eos is not None:
            out.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return out


@holding_the_model
@torch.no_grad()
def greedy_answer(model, context_ids: torch.Tensor, max_new_tokens: int, stop: set[int]) -> GreedyAnswer:
    """Greedy decoding of context_ids [n]: argmax of the next-token logits (ties: lowest id), at
    most ``max_new_tokens`` tokens, stopping after the first token in ``stop``.

    Written out rather than ``model.generate`` so that no generation-config setting (repetition
    penalty, sampling defaults) can make the answer differ from the model's argmax.
    """
    lm = as_model(model)
    device = lm.get_input_embeddings().weight.device
    cache = cache_kwargs(lm, DynamicCache())  # the model extends this cache in place
    logits = lm(input_ids=context_ids[None].to(device), logits_to_keep=1, **cache).logits[0, -1]
    generated: list[int] = []
    chosen: list[float] = []
    while True:
        probs = torch.softmax(logits.double(), dim=-1).cpu()
        if not generated:
            first_probs = probs
        token = int(probs.argmax())  # the logits' argmax: softmax keeps order and ties
        generated.append(token)
        chosen.append(float(probs[token]))
        if token in stop or len(generated) >= max_new_tokens:
            break
        logits = lm(input_ids=torch.tensor([[token]], device=device), logits_to_keep=1, **cache).logits[0, -1]
    return GreedyAnswer(torch.tensor(generated, dtype=torch.long), first_probs,
                        torch.tensor(chosen, dtype=torch.float64))


def normalise(text: str) -> str:
    """Lower case, every non-alphanumeric run -> one space, trimmed (the containment rule's form)."""
    return _NON_ALNUM.sub(" ", str(text).lower()).strip()


def contains_answer(answer: str, gold) -> bool:
    """Whether ``answer`` holds ``gold`` as a run of whole words after :func:`normalise` (module
    docstring; matched on the answer's own text by :func:`_find_gold`, the rule's one copy).
    An empty normalised gold answer is held by nothing."""
    return _find_gold(answer, gold) is not None


def _find_gold(text: str, gold) -> re.Match | None:
    """The first occurrence in ``text`` of the normalised gold answer's words as whole words: any
    non-alphanumeric run between them, no letter or digit on either side, case ignored (the
    containment rule, on the text itself so that the match has character offsets)."""
    words = normalise(gold).split()
    if not words:
        return None
    pattern = r"(?<![^\W_])" + r"[\W_]+".join(re.escape(w) for w in words) + r"(?![^\W_])"
    return re.search(pattern, str(text), flags=re.IGNORECASE)


def answer_span(tokenizer, ids, gold) -> tuple[int, int] | None:
    """[start, end) token indices of the gold answer's first occurrence in the answer ids [k], or
    None when the answer does not contain it (the rule of :func:`contains_answer`).

    The occurrence is found in the decoded answer; start is the token holding its first
    character (a word split into several tokens starts at its first piece), end the first token
    boundary at or after its last character.
    """
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    found = _find_gold(text, gold)
    if found is None:
        return None
    # Character offset of each token boundary whose decoded prefix is a prefix of the whole text.
    bounds = {}
    for j in range(len(ids) + 1):
        head = tokenizer.decode(ids[:j], skip_special_tokens=True)
        if text.startswith(head):
            bounds[j] = len(head)
    start = max(j for j, c in bounds.items() if c <= found.start())
    end = min(j for j, c in bounds.items() if c >= found.end())
    return start, end
