"""Users' text files (JSON, JSONL, CSV): one rule for bytes that are not UTF-8 and for JSON that does not parse.

Every reader of a user's data file (the evaluation's, heta_fast/evaluate/data.py; a run's,
heta_fast/pipeline/readers.py; a saved result's, heta_fast/result_format.py) refuses such a file
with an :class:`~heta_fast.errors.InputError` (a result file: its subclass ResultFormatError) that
names the file, the line and what is wrong, never with a traceback.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path

from .errors import InputError

# Bytes read at a time when a whole file is checked, so that a file larger than memory can be.
BLOCK = 1 << 20


def not_utf8(path, data: bytes, exc: UnicodeDecodeError, first_line: int = 1,
             error: type[InputError] = InputError) -> InputError:
    """The error for ``data``, the bytes of ``path`` from line ``first_line`` on, in which ``exc``
    found bytes that are not UTF-8: it names the first bad byte and its line."""
    line = first_line + data.count(b"\n", 0, exc.start)
    return error(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8")


def decode_utf8(data: bytes, path, error: type[InputError] = InputError) -> str:
    """The whole file's bytes ``data`` as text; :func:`not_utf8`'s ``error`` when they are not UTF-8.

    A leading byte-order mark (which editors on Windows write) is dropped: it marks the encoding
    and is no part of the text (the readers that stream a file open it as ``utf-8-sig`` alike)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, data, exc, error=error) from None


def utf8_error(path: str | Path) -> InputError | None:
    """The error for the first bytes of the file at ``path`` that are not UTF-8, or None when it all is.

    Read a block at a time: for a reader that decodes as it streams (a text-mode file),
    whose own UnicodeDecodeError knows neither the line nor the position in the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's pending bytes (a sequence's start, no newline) and the block.
                return not_utf8(path, exc.object, exc, line)
            if not block:
                return None
            line += block.count(b"\n")


def parse_json(text: str, where: str, error: type[InputError] = InputError):
    """``text`` decoded as JSON; ``error`` naming ``where`` when it is not JSON or is nested deeper
    than the decoder's recursion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if exc.lineno == 1 else f"line {exc.lineno} column {exc.colno}"
        raise error(f"{where}: not valid JSON ({exc.msg} at {at})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
