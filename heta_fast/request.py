"""Turning a (prompt, target) request into token ids, with clear errors for bad input.

The accepted forms of a prompt, a target and a batch item are checked in :mod:`heta_fast.inputs`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .inputs import as_token_ids, check_text


@dataclass(frozen=True)
class TokenizedRequest:
    """context_ids [n_context], target_ids [T]; the model input is context + target[:-1]."""

    context_ids: torch.Tensor
    target_ids: torch.Tensor
    prompt: str | None

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


def tokenize_request(tokenizer, prompt, target, max_length: int | None, vocab_size: int) -> TokenizedRequest:
    """Both halves of a request, checked against the model's maximum length."""
    context = tokenize_prompt(tokenizer, prompt, vocab_size)
    target_ids = tokenize_target(tokenizer, target, vocab_size)
    total = context.numel() + target_ids.numel() - 1
    if max_length is not None and total > max_length:
        raise InputError(f"prompt + target need {total} positions; the model's maximum is {max_length}")
    return TokenizedRequest(context_ids=context, target_ids=target_ids,
                            prompt=prompt if isinstance(prompt, str) else None)


def _check_vocab(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise InputError(f"{what} holds token id {int(bad[0])} outside the vocabulary [0, {vocab_size})")
