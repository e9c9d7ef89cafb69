"""Checking the rows of a results part as they are read (docs/pipeline.md, row schema).

Arrow checks each column's type; :func:`check_rows` checks what a type cannot say (lengths
against ``n_context`` and ``n_target``, nulls, the JSON columns), so a damaged row is a
ResultFormatError naming its file, row number and id, never a traceback or an object built from it.
"""
from __future__ import annotations

import functools

from ..errors import ResultFormatError
from ..textfiles import parse_json
from .schema import GIVEN_VALUES, MATRICES, arrow_schema, unescape_row

# (column, its length, whether a successful row must have it): per-context and per-target lists.
_LISTS = (("context_tokens", "n_context", True), ("target_tokens", "n_target", True),
          ("context_ids", "n_context", False), ("target_ids", "n_target", False), ("special", "n_context", False),
          ("attributed", "n_context", False), ("sinks", "n_context", False), ("segments", "n_context", False))


def check_rows(table, source) -> None:
    """Raise ResultFormatError naming ``source`` (a part file), the row's number and its id at the
    first row of ``table`` (all columns of the current :func:`arrow_schema`) whose contents
    contradict each other: a row without id or ``ok``; a successful row whose n_context or
    n_target is null, whose token lists, ids or marks do not hold that many entries, whose scores
    are null, whose matrices are not [n_target][n_context] numbers, whose ``config`` is not a JSON
    object or ``messages`` not a JSON list of objects; a column ``json_encoded`` names that is not
    JSON. Arrow has checked each column's type; this checks what a type cannot say, so that every
    form of ``read_results`` reads only rows it can take at their word. Lengths are checked on
    Arrow arrays (no Python objects: cheap on large parts), the JSON texts row by row."""
    import numpy as np

    table = table.combine_chunks()
    shape = _shape_problems(table)
    damaged = np.flatnonzero(np.any([bad for bad, _ in shape], axis=0))
    first = int(damaged[0]) if damaged.size else table.num_rows
    columns = ["id", "ok", "config", "messages", *GIVEN_VALUES, "escaped", "json_encoded"]
    for i, row in enumerate(table.slice(0, first).select(columns).to_pylist()):
        where = f"{source}: row {i + 1} (id {row['id']!r})"
        problem = _json_problem(row, where)
        if problem:
            raise ResultFormatError(f"{where} is damaged: {problem}")
    if damaged.size:
        row = table.slice(first, 1).select(["id", "n_context", "n_target"]).to_pylist()[0]
        problem = next(text for bad, text in shape if bad[first])
        raise ResultFormatError(f"{source}: row {first + 1} (id {row['id']!r}) is damaged: {problem.format(**row)}")


def _shape_problems(table) -> list[tuple]:
    """[(per-row bool array, the problem)] of the rows of ``table`` (one chunk per column) whose
    lengths or nulls are wrong; a problem's text names n_context and n_target as ``{n_context}``."""
    import numpy as np
    import pyarrow.compute as pc

    ok = _numbers(table["ok"], False)
    sizes = {name: _numbers(table[name], -1) for name in ("n_context", "n_target")}
    problems = [(_numbers(pc.is_null(table["id"]), False), "it has no id"),
                (_numbers(pc.is_null(table["ok"]), False), "its 'ok' is null"),
                (ok & ((sizes["n_context"] < 0) | (sizes["n_target"] < 0)),
                 "its n_context ({n_context}) or n_target ({n_target}) is null or negative")]
    for name, size, required in _LISTS:
        array = table[name].combine_chunks()
        length = _numbers(pc.list_value_length(array), -1)
        wrong = (length != sizes[size]) & ((length >= 0) | required)
        problems.append((ok & (wrong | _null_entries(array)),
                         f"{name} is not a list of {size} ({{{size}}}) values{'' if required else ' or null'}"))
    for name in MATRICES:
        array = table[name].combine_chunks()
        rows = _numbers(pc.list_value_length(array), -1)
        wrong = (rows != sizes["n_target"]) & ((rows >= 0) | (name == "scores"))
        # Each row of the matrix: n_context numbers, none null.
        parents = np.asarray(pc.list_parent_indices(array))
        inner = pc.list_flatten(array)
        short = parents[_numbers(pc.list_value_length(inner), -1) != sizes["n_context"][parents]]
        wrong[short] = True
        wrong |= _null_entries(array) | _null_entries(inner, parents, len(table))
        problems.append((ok & wrong, f"{name} is not n_target ({{n_target}}) lists of n_context ({{n_context}}) "
                                     f"numbers{' or null' if name != 'scores' else ''}"))
    return problems


def _numbers(array, null):
    """A (chunked) Arrow array as a NumPy array, nulls as ``null``."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(array, null).to_numpy(zero_copy_only=False))


def _null_entries(array, parents=None, rows: int | None = None):
    """Per row, whether the list array ``array`` holds a null entry; ``parents``: the row of each of
    its lists, when they are the lists of ``rows`` rows (a matrix's inner lists)."""
    import numpy as np
    import pyarrow.compute as pc

    own = np.asarray(pc.list_parent_indices(array))
    if parents is not None:
        own = parents[own]
    out = np.zeros(len(array) if rows is None else rows, bool)
    out[own[_numbers(pc.is_null(pc.list_flatten(array)), False)]] = True
    return out


def _json_problem(row: dict, where: str) -> str | None:
    """What is wrong with the text columns of a stored row, or None: ``escaped`` naming a column
    that is not text, a column ``json_encoded`` names that is not JSON, a successful row's
    ``config`` that is not a JSON object or ``messages`` that is not a JSON list of objects."""
    if row["escaped"] and not set(row["escaped"]) <= _text_columns():
        return f"escaped names {row['escaped']}, not text columns"
    row = unescape_row(row)
    encoded = row["json_encoded"] or []
    if any(name not in GIVEN_VALUES or row[name] is None for name in encoded):
        return f"json_encoded names {encoded}, not columns among {list(GIVEN_VALUES)} that hold text"
    # A failure's messages are what its record gave (any JSON value); a success's, chat messages.
    parsed = {name: parse_json(row[name], f"{where}, column {name}", ResultFormatError)
              for name in (*encoded, "messages", *(("config",) if row["ok"] else ())) if row[name] is not None}
    if not isinstance(parsed.get("config", {}), dict):
        return "config is not a JSON object"
    messages = parsed.get("messages", [])
    if row["ok"] and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        return "messages is not a JSON list of objects"
    return None


@functools.cache
def _text_columns() -> frozenset[str]:
    """The columns of text or lists of text: those ``escaped`` may name."""
    import pyarrow as pa

    return frozenset(f.name for f in arrow_schema() if f.type in (pa.string(), pa.list_(pa.string())))
