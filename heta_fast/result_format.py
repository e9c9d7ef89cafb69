"""Reading an attribution file back: every field checked, every failure one ResultFormatError.

:func:`read_result` returns the keyword arguments of :class:`~heta_fast.result.Attribution` for
a JSON text or file written by ``Attribution.to_json``, or raises
:class:`~heta_fast.errors.ResultFormatError` naming the file (or "the JSON text") and what is
wrong: unreadable, not UTF-8, not JSON, another format version, a missing or mistyped field, a
matrix of the wrong shape, a number that is NaN or infinite.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .components import COMPONENTS
from .errors import ResultFormatError
from .textfiles import decode_utf8, parse_json

# 2 added the token marks (special, segments, attributed, sinks) and the chat messages; 1 is still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
UNITS = ("tokens", "words")
_MATRICES = ("scores",) + COMPONENTS
_OPTIONAL_TEXT = ("prompt", "model", "model_dtype", "device", "architecture")
_MARKS = ("special", "attributed", "sinks")
FIELDS = {"format_version", "method", "unit", "context_tokens", "target_tokens", "context_ids", "target_ids",
          "config", "timings", "segments", "messages", *_MARKS, *_MATRICES, *_OPTIONAL_TEXT}


def read_result(path_or_text) -> dict:
    """Attribution keyword arguments from a path or the JSON text itself: text is a string that
    starts with ``{`` (white space aside) and names no file, so that a file such as ``{run}.json``
    is read as the file it names."""
    text = _json_text(path_or_text) if isinstance(path_or_text, str) else None
    if text is not None:
        return parse_result(parse_json(text, "the JSON text", ResultFormatError), "the JSON text")
    if not isinstance(path_or_text, (str, os.PathLike)) or str(path_or_text).strip() == "":
        raise ResultFormatError(f"from_json takes a path or JSON text, got {type(path_or_text).__name__} "
                                f"{str(path_or_text)[:40]!r}")
    path = Path(path_or_text)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        shown = str(path) if str(path).isprintable() else repr(str(path))  # the error stays one line
        raise ResultFormatError(f"cannot read {shown}: {getattr(exc, 'strerror', None) or exc}") from None
    text = decode_utf8(raw, path, ResultFormatError)
    return parse_result(parse_json(text, str(path), ResultFormatError), str(path))


def _json_text(text: str) -> str | None:
    """``text`` as an object's JSON text (white space and a byte-order mark, no part of it, dropped),
    or None when it is a path (see :func:`read_result`)."""
    stripped = text.strip().removeprefix("\ufeff")
    if not stripped.startswith("{"):
        return None
    try:
        return None if Path(text).is_file() else stripped
    except (OSError, ValueError):  # too long or NUL bytes for a file name: text
        return stripped


def parse_result(d, where: str = "the result") -> dict:
    """Check a decoded result mapping; returns Attribution keyword arguments (matrices as nested lists)."""
    def fail(what: str):
        raise ResultFormatError(f"{where}: {what}")

    if not isinstance(d, dict):
        fail(f"expected a JSON object, got {_kind(d)}")
    version = d.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        fail(f"format_version {version!r} is not one this heta-fast reads {READABLE_VERSIONS}")
    unknown = sorted(str(k) for k in d if k not in FIELDS)
    if unknown:
        fail(f"unknown fields {unknown}")
    out = {}
    for name in ("context_tokens", "target_tokens"):
        value = d.get(name)
        if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
            fail(f"{name} must be a non-empty list of strings, got {_kind(value)}")
        out[name] = list(value)
    shape = (len(out["target_tokens"]), len(out["context_tokens"]))
    for name in _MATRICES:
        value = d.get(name)
        if value is None and name != "scores":
            out[name] = None
            continue
        out[name] = _matrix(value, shape, name, fail)
    unit = d.get("unit", "tokens")
    if unit not in UNITS:
        fail(f"unit must be one of {UNITS}, got {unit!r}")
    out["unit"] = unit
    lengths = {"target_ids": shape[0], "context_ids": shape[1] if unit == "tokens" else None}
    for name, length in lengths.items():
        value = d.get(name)
        if value is not None:
            ok = isinstance(value, list) and all(_is_id(i) for i in value)
            if not ok or (length is not None and len(value) != length):
                fail(f"{name} must be a list of {length if length is not None else 'the'} non-negative integer ids")
        out[name] = value
    for name in _OPTIONAL_TEXT:
        value = d.get(name)
        if value is not None and not isinstance(value, str):
            fail(f"{name} must be a string or null, got {_kind(value)}")
        out[name] = value
    method = d.get("method", "heta")
    if not isinstance(method, str) or not method:
        fail(f"method must be a non-empty string, got {_kind(method)}")
    out["method"] = method
    for name in ("config", "timings"):
        value = d.get(name)
        value = {} if value is None else value
        if not isinstance(value, dict):
            fail(f"{name} must be an object, got {_kind(value)}")
        out[name] = value
    out.update(_token_marks(d, shape[1], fail))
    return out


def _token_marks(d: dict, n: int, fail) -> dict:
    """special / attributed / sinks ([n] booleans), messages and segments ([n] message indices or -1), each
    optional (null or absent)."""
    out = {}
    for name in _MARKS:
        value = d.get(name)
        if value is not None and not (isinstance(value, list) and len(value) == n
                                      and all(isinstance(x, bool) for x in value)):
            fail(f"{name} must be null or a list of {n} booleans (one per context unit), got {_kind(value)}")
        out[name] = value
    messages = d.get("messages")
    if messages is not None:
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values())
            for m in messages)
        if not ok:
            fail(f"messages must be null or a non-empty list of {{role, content}} text objects, got {_kind(messages)}")
    out["messages"] = messages
    segments = d.get("segments")
    if segments is not None:
        top = len(messages) if messages is not None else 0
        ok = isinstance(segments, list) and len(segments) == n and all(
            isinstance(x, int) and not isinstance(x, bool) and -1 <= x < top for x in segments)
        if not ok:
            fail(f"segments must be null or a list of {n} message indices in [-1, {top}), got {_kind(segments)}")
    out["segments"] = segments
    return out


def _matrix(value, shape: tuple[int, int], name: str, fail) -> list[list[float]]:
    """[rows][cols] of finite numbers, exactly ``shape``."""
    rows, cols = shape
    if not isinstance(value, list) or len(value) != rows:
        fail(f"{name} must be a list of {rows} rows (one per target token), got {_kind(value)}")
    for t, row in enumerate(value):
        if not isinstance(row, list) or len(row) != cols:
            fail(f"{name}[{t}] must be a list of {cols} numbers (one per context unit), got {_kind(row)}")
        for i, x in enumerate(row):
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                fail(f"{name}[{t}][{i}] is {_kind(x)}, not a number")
            try:
                finite = math.isfinite(x)
            except OverflowError:  # an integer beyond float range
                finite = False
            if not finite:
                fail(f"{name}[{t}][{i}] is {_kind(x)}: scores must be finite")
    return value


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
