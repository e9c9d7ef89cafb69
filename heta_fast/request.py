"""Turning a (prompt or chat messages, target) request into token ids, with clear errors for bad input.

The accepted forms of a prompt, a target and a batch item are checked in :mod:`heta_fast.inputs`,
chat messages and their rendering in :mod:`heta_fast.chat`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .chat import check_messages, render_chat, special_mask
from .errors import ConfigError, InputError
from .inputs import as_token_ids, check_text


@dataclass(frozen=True)
class TokenizedRequest:
    """context_ids [n_context], target_ids [T]; the model input is context + target[:-1].

    prompt: the prompt text (a chat's rendering by its template), None for ids;
    special [n_context] bool: the tokenizer's special tokens among the context (None when unknown);
    segments [n_context]: a chat's message index per context token, -1 for template tokens
    (None for a plain prompt); messages: the chat messages, None for a plain prompt.
    """

    context_ids: torch.Tensor
    target_ids: torch.Tensor
    prompt: str | None
    special: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    messages: tuple | None = None

    @property
    def n_context(self) -> int:
        return int(self.context_ids.numel())

    @property
    def input_ids(self) -> torch.Tensor:
        """[n_context + T - 1]: every target token but the last is also an input."""
        return torch.cat([self.context_ids, self.target_ids[:-1]])

    @property
    def target_positions(self) -> torch.Tensor:
        """[T]: input position predicting each target token."""
        return torch.arange(self.target_ids.numel()) + self.n_context - 1


def tokenize_prompt(tokenizer, prompt, vocab_size: int) -> torch.Tensor:
    """Prompt text (tokenised with the tokenizer's usual special tokens) or ids -> ids [n].

    Accepted: ``str``, a 1-D sequence of Python/NumPy integers, a 1-D integer tensor or array.
    Anything else (bytes, floats, bools, nested or 2-D values, None, ...) is an ``InputError``
    naming what was given.
    """
    if isinstance(prompt, str):
        check_text(prompt, "prompt")
        if not prompt.strip():
            raise InputError("the prompt is empty")
        ids = torch.tensor(tokenizer(prompt, add_special_tokens=True)["input_ids"], dtype=torch.long)
    else:
        ids = as_token_ids(prompt, "prompt", vocab_size)
    if ids.numel() == 0:
        raise InputError("the prompt has no tokens")
    _check_vocab(ids, vocab_size, "prompt")
    return ids


def tokenize_target(tokenizer, target, vocab_size: int) -> torch.Tensor:
    """Target text (tokenised without special tokens: it continues the prompt) or ids -> ids [T].

    Accepted forms as for :func:`tokenize_prompt`.
    """
    if isinstance(target, str):
        check_text(target, "target")
        if target == "":
            raise InputError("the target is empty")
        ids = torch.tensor(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if ids.numel() == 0:
            raise InputError(f"the target {target!r} tokenises to no tokens")
    else:
        ids = as_token_ids(target, "target", vocab_size)
    if ids.numel() == 0:
        raise InputError("the target has no tokens")
    _check_vocab(ids, vocab_size, "target")
    return ids


# The mask schemes that replace a masked token by the embedding of one of the tokenizer's
# special tokens (heta_fast/signals/information/masking.py); named after the token.
TOKEN_MASK_SCHEMES = ("pad", "unk")


def option_token_id(tokenizer, option: str, token: str, vocab_size: int | None) -> int:
    """The id of the tokenizer's special ``token`` ("pad", "unk", "bos" or "eos") that the config
    option ``option`` (``mask_scheme``, ``sink_token``) asks for: the one rule for such a token.

    ``ConfigError`` when the tokenizer has no such token, or when its id lies outside the model's
    vocabulary ``[0, vocab_size)`` (None: not checked), where the model has no embedding for it.
    """
    name = token.upper()
    token_id = getattr(tokenizer, f"{token}_token_id", None) if tokenizer is not None else None
    if token_id is None:
        raise ConfigError(f"{option}={token!r} but the tokenizer has no {name} token; choose another {option}")
    if vocab_size is not None and not 0 <= int(token_id) < vocab_size:
        text = getattr(tokenizer, f"{token}_token", None)
        raise ConfigError(f"{option}={token!r} but the tokenizer's {name} token {text!r} has id {int(token_id)}, "
                          f"outside the model's vocabulary of {vocab_size} tokens [0, {vocab_size}); "
                          f"choose another {option}")
    return int(token_id)


def sink_token_id(tokenizer, sink_token: str, vocab_size: int | None = None) -> int | None:
    """The id of ``HETAConfig.sink_token`` ("none" -> None, "bos" / "eos" -> the tokenizer's token);
    ``ConfigError`` as :func:`option_token_id` says."""
    if sink_token == "none":
        return None
    return option_token_id(tokenizer, "sink_token", sink_token, vocab_size)


def mask_token_id(tokenizer, mask_scheme: str, vocab_size: int | None = None) -> int | None:
    """The id whose embedding ``HETAConfig.mask_scheme`` puts in place of a masked token ("pad" /
    "unk": the tokenizer's token; "zero" / "mean" use none: None); ``ConfigError`` as
    :func:`option_token_id` says."""
    if mask_scheme not in TOKEN_MASK_SCHEMES:
        return None
    return option_token_id(tokenizer, "mask_scheme", mask_scheme, vocab_size)


def check_option_tokens(tokenizer, config, vocab_size: int) -> None:
    """Every special token ``config`` names (its mask scheme's, its sink token): a ``ConfigError``
    now, before any work, for one the tokenizer lacks or the model cannot embed."""
    if "information" in config.components:  # the only user of the mask scheme's token
        mask_token_id(tokenizer, config.mask_scheme, vocab_size)
    sink_token_id(tokenizer, config.sink_token, vocab_size)


def with_sink_token(context: TokenizedRequest, sink_id: int | None) -> TokenizedRequest:
    """``context`` with ``sink_id`` put before its tokens as a special (template) token, unless
    it has no sink token to add (None) or already starts with a special token (a tokenizer's
    own BOS, a chat template's first marker): that token is the sink already."""
    special = context.special if context.special is not None else torch.zeros(context.n_context, dtype=torch.bool)
    if sink_id is None or bool(special[0]):
        return context
    ids = torch.cat([torch.tensor([sink_id], dtype=context.context_ids.dtype), context.context_ids])
    segments = None if context.segments is None else torch.cat([context.segments.new_tensor([-1]), context.segments])
    return dataclasses.replace(context, context_ids=ids, special=torch.cat([special.new_ones(1), special]),
                               segments=segments)


def tokenize_context(tokenizer, prompt, vocab_size: int, messages=None, sink_id: int | None = None) -> TokenizedRequest:
    """The context half of a request: a prompt (text or ids) or chat ``messages``, exactly one of
    them, after ``sink_id`` if given (:func:`with_sink_token`). Returns a request whose
    ``target_ids`` is empty (:func:`with_target` completes it)."""
    if (prompt is None) == (messages is None):
        raise InputError("the prompt must be text or token ids, or chat messages given as messages=; got None"
                         if prompt is None else "give a prompt or chat messages, not both")
    if messages is None:
        context = tokenize_prompt(tokenizer, prompt, vocab_size)
        text, segments = (prompt if isinstance(prompt, str) else None), None
    else:
        messages = check_messages(messages)
        chat = render_chat(tokenizer, messages)
        context, text, segments = chat.ids, chat.text, chat.segments
        _check_vocab(context, vocab_size, "chat prompt")
    request = TokenizedRequest(context_ids=context, target_ids=context[:0], prompt=text,
                               special=special_mask(tokenizer, context), segments=segments, messages=messages)
    return with_sink_token(request, sink_id)


def with_target(context: TokenizedRequest, target_ids: torch.Tensor, max_length: int | None) -> TokenizedRequest:
    """``context`` with its target [T] (T >= 1), checked against the model's maximum length."""
    total = context.n_context + target_ids.numel() - 1
    if max_length is not None and total > max_length:
        raise InputError(f"prompt + target need {total} positions; the model's maximum is {max_length}")
    return dataclasses.replace(context, target_ids=target_ids)


def tokenize_request(tokenizer, prompt, target, max_length: int | None, vocab_size: int,
                     messages=None, sink_id: int | None = None) -> TokenizedRequest:
    """Both halves of a request (a prompt or chat ``messages``, and a target), checked against
    the model's maximum length; ``sink_id``: a sink token before the context (:func:`sink_token_id`)."""
    context = tokenize_context(tokenizer, prompt, vocab_size, messages, sink_id)
    return with_target(context, tokenize_target(tokenizer, target, vocab_size), max_length)


def _check_vocab(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise InputError(f"{what} holds token id {int(bad[0])} outside the vocabulary [0, {vocab_size})")
