"""The forms a request may take, checked exactly: nothing is read as something else.

A prompt or target is ``str`` (valid Unicode text) or token ids: a 1-D sequence of integers
(Python or NumPy, not bool), a 1-D integer tensor or a 1-D integer NumPy array. A batch item
(``attribute_many``) is a ``(prompt, target)`` pair (tuple or list of two) or a mapping with the
fields ``prompt`` and ``target``. Everything else raises :class:`~heta_fast.errors.InputError`
naming what was given.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from .errors import InputError

REQUEST_FIELDS = ("prompt", "messages", "target")
_NOT_ID_SEQUENCES = (str, bytes, bytearray, memoryview)


def describe(value, limit: int = 60) -> str:
    """A short description of ``value`` for messages: its type and a clipped repr."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {str(value.dtype).removeprefix('torch.')} and shape {tuple(value.shape)}"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # a NumPy array and the like
        return f"an array ({type(value).__name__}) of dtype {value.dtype} and shape {tuple(shape)}"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def check_text(text: str, what: str) -> None:
    """Raise InputError unless ``text`` encodes as UTF-8 (no lone surrogates).

    A command-line argument that was not valid UTF-8 reaches Python with each bad byte as a
    surrogate U+DC80..U+DCFF; the message gives the byte.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            raise InputError(f"the {what} is not valid UTF-8 text (byte 0x{code - 0xDC00:02x} at character "
                             f"{exc.start})") from None
        raise InputError(f"the {what} holds a lone surrogate U+{code:04X} at character {exc.start}, "
                         "which is not text") from None


def is_integer(x) -> bool:
    """Whether ``x`` is one integer: a Python int, a NumPy integer scalar or a 0-d integer tensor
    (never a bool, whose True would be read as 1)."""
    if isinstance(x, bool) or type(x).__name__ in ("bool_", "bool"):
        return False
    if isinstance(x, int):
        return True
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and not x.dtype.is_floating_point and not x.dtype.is_complex and x.dtype != torch.bool
    dtype = getattr(x, "dtype", None)  # NumPy scalars
    return getattr(dtype, "kind", None) in ("i", "u") and getattr(x, "ndim", None) == 0


def as_token_ids(value, what: str, vocab_size: int) -> torch.Tensor:
    """Token ids given as a 1-D integer tensor, array or sequence -> int64 tensor [n].

    Every id must lie in [0, vocab_size); checked before any conversion, so that no id wraps.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise InputError(f"the {what} must be text or a 1-D integer tensor of token ids; got {describe(value)}")
        ids = value.detach().cpu().tolist()
    elif hasattr(value, "dtype") and hasattr(value, "ndim") and hasattr(value, "tolist"):  # NumPy arrays
        if value.ndim != 1 or getattr(value.dtype, "kind", None) not in ("i", "u"):
            raise InputError(f"the {what} must be text or a 1-D integer array of token ids; got {describe(value)}")
        ids = value.tolist()
    elif isinstance(value, Sequence) and not isinstance(value, _NOT_ID_SEQUENCES):
        for i, x in enumerate(value):
            if not is_integer(x):
                raise InputError(f"the {what} must be text or a sequence of integer token ids; element {i} is "
                                 f"{describe(x)}")
        ids = [int(x) for x in value]
    else:
        raise InputError(f"the {what} must be text or a 1-D sequence of integer token ids; got {describe(value)}")
    for i in ids:
        if not 0 <= i < vocab_size:
            raise InputError(f"the {what} holds token id {i} outside the vocabulary [0, {vocab_size})")
    return torch.tensor(ids, dtype=torch.long)


def request_fields(item) -> tuple[object, object, object]:
    """(prompt, target, messages) of one ``attribute_many`` item: a (prompt, target) pair, or a
    mapping with ``target`` and exactly one of ``prompt`` and ``messages`` (the other is None)."""
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise InputError(f"a request pair is (prompt, target), 2 items; got {describe(item)}")
        return item[0], item[1], None
    if isinstance(item, Mapping):
        keys = list(item)
        unknown = [k for k in keys if k not in REQUEST_FIELDS]
        if unknown:
            raise InputError(f"unknown request fields {unknown!r}; a request mapping has 'target' and "
                             "'prompt' or 'messages'")
        if "target" not in item:
            raise InputError("the request mapping lacks 'target'")
        if ("prompt" in item) == ("messages" in item):
            raise InputError("a request mapping has exactly one of 'prompt' and 'messages'")
        return item.get("prompt"), item["target"], item.get("messages")
    raise InputError("a request is a (prompt, target) pair or a mapping with 'target' and 'prompt' or 'messages'; "
                     f"got {describe(item)}")


def request_items(requests, caller: str = "attribute_many", items: str = "requests (pairs or mappings)") -> Iterable:
    """The items of ``caller``'s argument (an iterable of ``items``), refusing a lone request, a
    record or text passed instead (text would be read one character at a time)."""
    if isinstance(requests, (*_NOT_ID_SEQUENCES, Mapping, torch.Tensor)):
        raise InputError(f"{caller} takes an iterable of {items}; got {describe(requests)} "
                         "(wrap a single one in a list)")
    if not isinstance(requests, Iterable):
        raise InputError(f"{caller} takes an iterable of {items}; got {describe(requests)}")
    return requests


def check_token_count(value, name: str) -> int:
    """A number of tokens to generate: an integer >= 1 (not a bool, a float or a tensor)."""
    if not is_integer(value) or isinstance(value, torch.Tensor) or int(value) < 1:
        raise InputError(f"{name} must be an integer >= 1; got {describe(value)}")
    return int(value)


def check_max_new_tokens(max_new_tokens, n_context: int, max_length: int | None) -> int:
    """``generate_and_attribute``'s token budget: an integer >= 1 whose worst case fits the model."""
    n = check_token_count(max_new_tokens, "max_new_tokens")
    if max_length is not None and n_context + n - 1 > max_length:
        raise InputError(f"the prompt's {n_context} tokens + max_new_tokens={n} need {n_context + n - 1} positions; "
                         f"the model's maximum is {max_length}")
    return n
