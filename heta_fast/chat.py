"""Chat prompts: messages rendered by the model's chat template, each token marked with its message.

A chat request's context is the tokenizer's chat template applied to the messages with the
generation prompt added (what the model sees before it answers). Every context token gets a
*segment*: the index of the message whose content it belongs to, or ``TEMPLATE`` (-1) for the
template's own tokens (BOS, role markers, separators, a default system prompt the template
inserts). How a token is assigned, with no guessing (docs/method.md, "Chat prompts"):

1. The messages are rendered twice: as given, and with each content replaced by a unique
   placeholder. Cutting the placeholder rendering at its placeholders gives the template's own
   text between the contents; putting the contents back must give exactly the real rendering
   (each content verbatim, or stripped of surrounding white space for templates that trim it).
   Any other transformation of a content is refused: its tokens could not be marked honestly.
2. The real rendering is tokenised once (no special tokens added: the template writes its own),
   with character offsets. A token belongs to message m when its characters overlap m's
   content; a special token (BOS, EOS, role markers registered as special) never does.

By default only message contents are attributed (``HETAConfig.template_tokens = "condition"``):
template tokens are inputs the model conditions on, their columns of every score are 0.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import InputError
from .inputs import check_text, describe

TEMPLATE = -1
_MESSAGE_KEYS = ("role", "content")
# The stem of the placeholders: no white space or markup, so no template alters it.
_PLACEHOLDER_STEM = "HETAFASTMSG"


@dataclass(frozen=True)
class RenderedChat:
    """text: the template's rendering; ids [n]; segments [n] (message index, TEMPLATE for -1)."""

    text: str
    ids: torch.Tensor
    segments: torch.Tensor


def check_messages(messages) -> tuple[dict, ...]:
    """The accepted form of chat messages: a non-empty sequence of mappings with a non-empty text
    ``role`` and a text ``content`` (no other fields); anything else is an ``InputError``."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} mappings; "
                         f"got {describe(messages)}")
    if not messages:
        raise InputError("messages must hold at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InputError(f"message {i} must be a mapping with 'role' and 'content'; got {describe(message)}")
        unknown = [k for k in message if k not in _MESSAGE_KEYS]
        if unknown:
            raise InputError(f"message {i} has unknown fields {unknown!r}; a message has 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role.strip():
            raise InputError(f"message {i}: 'role' must be non-empty text; got {describe(role)}")
        if not isinstance(content, str):
            raise InputError(f"message {i}: 'content' must be text; got {describe(content)}")
        check_text(role, f"message {i} role")
        check_text(content, f"message {i} content")
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise InputError("every message's content is empty")
    return tuple(out)


def has_chat_template(tokenizer) -> bool:
    """Whether ``tokenizer`` can render chat messages (it carries a chat template)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, messages) -> RenderedChat:
    """Checked messages -> the context the model answers from, every token marked with its message.

    Raises ``InputError`` when the tokenizer has no chat template (or is not a fast tokenizer,
    whose character offsets the marking needs), when the template refuses the messages, or when
    it transforms a content beyond stripping white space.
    """
    if not has_chat_template(tokenizer):
        raise InputError("this model's tokenizer has no chat template; give a plain prompt instead of messages")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("chat prompts need a fast tokenizer (its character offsets mark each message's tokens)")
    text = _apply_template(tokenizer, messages)
    spans = _content_spans(tokenizer, messages, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    special = special_ids(tokenizer)
    segments = torch.full((ids.numel(),), TEMPLATE, dtype=torch.long)
    for t, ((s, e), token) in enumerate(zip(enc["offset_mapping"], enc["input_ids"])):
        if e <= s or token in special:
            continue
        for m, (a, b) in enumerate(spans):
            if s < b and a < e:  # the token's characters overlap message m's content
                segments[t] = m
                break
    return RenderedChat(text=text, ids=ids, segments=segments)


def _apply_template(tokenizer, messages) -> str:
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # templates are Jinja programs: any refusal is about these messages
        raise InputError(f"the chat template refused the messages: {' '.join(str(exc).split())}") from None
    if not isinstance(text, str) or not text:
        raise InputError("the chat template rendered the messages to nothing")
    return text


def _content_spans(tokenizer, messages, text: str) -> list[tuple[int, int]]:
    """[start, stop) of each message's content in ``text`` (empty spans for empty contents)."""
    # Placeholders that occur nowhere in the real rendering: lengthen the stem until it does not.
    stem = _PLACEHOLDER_STEM
    while stem in text:
        stem += "Z"
    marks = [f"{stem}{i}Q" for i in range(len(messages))]
    skeleton = _apply_template(tokenizer, [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)])
    pieces, rest = [], skeleton
    for i, mark in enumerate(marks):
        if rest.count(mark) != 1:
            raise InputError(f"the chat template writes message {i}'s content {rest.count(mark)} times; "
                             "its tokens cannot be marked")
        head, rest = rest.split(mark)
        pieces.append(head)
    for strip in (False, True):
        spans, out = [], ""
        for piece, m in zip(pieces, messages):
            content = m["content"].strip() if strip else m["content"]
            out += piece
            spans.append((len(out), len(out) + len(content)))
            out += content
        if out + rest == text:
            return spans
    raise InputError("the chat template transforms the message contents (beyond stripping white space); "
                     "their tokens cannot be marked")


def special_ids(tokenizer) -> set[int]:
    """The tokenizer's special tokens (BOS, EOS, padding, role markers registered as special), but
    not its unknown token: that one stands for text the vocabulary lacks, wherever it came from."""
    return set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}


def special_mask(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """[n] bool: which of ``ids`` [n] are special tokens (:func:`special_ids`)."""
    return torch.isin(ids, torch.tensor(sorted(special_ids(tokenizer)), dtype=torch.long))


def attributed_mask(segments: torch.Tensor | None, n_context: int, template_tokens: str) -> torch.Tensor:
    """[n_context] bool: the context tokens that get attribution. Every token of a plain prompt;
    of a chat prompt, message contents only unless ``template_tokens == "attribute"``."""
    if segments is None or template_tokens == "attribute":
        return torch.ones(n_context, dtype=torch.bool)
    return segments != TEMPLATE
