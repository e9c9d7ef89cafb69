"""Reading and writing pipeline results (the schema: docs/pipeline.md).

>>> df = read_results("out/")                        # long format, one row per id x target x context token
>>> rows = read_results("out/", form="records")      # one row per record, failures included (ok=False)
>>> res = read_results("out/", form="attributions")  # {id: Attribution | FailedAttribution}
>>> write_results(attr.attribute_dataset(records), "out/", attributor=attr)

Only part files listed in a manifest are read (a part a crash left behind is not), each checked
against its manifest (a plain file name in the parts folder, the row count) and the row schema, and
each row's contents against each other (``row_checks.check_rows``); a damaged directory is a
ResultFormatError naming the file (a damaged row: its number and id too). An id written more than once
(``--retry-failed``) is read once: its successful row, else its last.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, InputError
from .pipeline.manifest import manifests, read_listed_parts
from .pipeline.schema import (
    MATRICES,
    SCHEMA_VERSION,
    arrow_schema,
    check_storable,
    decoded_target,
    result_to_row,
    row_to_result,
    unescape_row,
)
from .pipeline.writer import ResultWriter

__all__ = ["read_results", "read_table", "write_results", "ResultWriter", "result_to_row", "SCHEMA_VERSION"]

LONG_COLUMNS = ["id", "target_index", "target_token", "context_index", "context_token", "special", "attributed",
                "segment", *MATRICES]
FORMS = ("long", "records", "attributions")


def read_table(directory):
    """Every record's row as one pyarrow Table (the schema of SCHEMA_VERSION: a column that an older
    part lacks is null), one row per id.

    Raises InputError when ``directory`` is not a path or holds no results, ResultFormatError when
    a manifest or a part file is damaged."""
    import pyarrow as pa

    if not isinstance(directory, (str, os.PathLike)):
        raise InputError(f"the results directory must be a directory path, got {type(directory).__name__} "
                         f"{directory!r}")
    directory = Path(directory).expanduser()
    if not (directory.is_dir() and manifests(directory)):
        raise InputError(f"{directory} holds no heta-fast results (no manifest)")
    tables = read_listed_parts(directory)
    table = pa.concat_tables(tables) if tables else arrow_schema().empty_table()
    ids, oks = table.column("id").to_pylist(), table.column("ok").to_pylist()
    keep: dict[str, int] = {}
    for i, (key, ok) in enumerate(zip(ids, oks)):
        if key not in keep or ok or not oks[keep[key]]:
            keep[key] = i
    return table.take(pa.array(sorted(keep.values()), type=pa.int64()))


def read_results(directory, form: str = "long"):
    """The results in ``directory``: ``form`` "long" (DataFrame: id, target_index, target_token,
    context_index, context_token, special (None when not recorded), attributed, segment (a chat
    record's message index, -1 for template tokens; None for a plain prompt), scores, flow,
    curvature, information; successful records only),
    "records" (DataFrame, one row per record, the stored schema: text that is not UTF-8 stays
    escaped, its column named in ``escaped``) or "attributions" ({id: Attribution |
    FailedAttribution}, matrices float64 [n_target, n_context], escaped text given back, a prompt
    or target given as token ids as the engine has it: a success's prompt None, a failure's a list).

    Raises ConfigError for another ``form``; read_table's errors."""
    if form not in FORMS:
        raise ConfigError(f"unknown form {form!r}; choose {', '.join(FORMS)}")
    table = read_table(directory)
    if form == "records":
        return table.to_pandas()
    if form == "attributions":
        rows = [unescape_row(row) for row in table.to_pylist()]
        return {row["id"]: row_to_result(row) for row in rows}
    return _long(table)


def _long(table):
    import numpy as np
    import pandas as pd

    table = table.filter(table.column("ok"))
    columns: dict[str, list] = {name: [] for name in LONG_COLUMNS}
    marks = ["special", "attributed", "segments"]
    for row in table.select(["id", "n_target", "n_context", "context_tokens", "target_tokens", *marks,
                             *MATRICES]).to_pylist():
        t, n = row["n_target"], row["n_context"]
        special = row["special"] if row["special"] is not None else [None] * n
        attributed = row["attributed"] if row["attributed"] is not None else [True] * n
        segments = row["segments"] if row["segments"] is not None else [None] * n
        columns["special"].append(np.tile(np.array(special, dtype=object), t))
        columns["attributed"].append(np.tile(np.array(attributed, dtype=bool), t))
        columns["segment"].append(np.tile(np.array(segments, dtype=object), t))
        columns["id"].append(np.repeat(np.array([row["id"]], dtype=object), t * n))
        columns["target_index"].append(np.repeat(np.arange(t), n))
        columns["target_token"].append(np.repeat(np.array(row["target_tokens"], dtype=object), n))
        columns["context_index"].append(np.tile(np.arange(n), t))
        columns["context_token"].append(np.tile(np.array(row["context_tokens"], dtype=object), t))
        for name in MATRICES:
            value = row[name]
            columns[name].append(np.full(t * n, np.nan) if value is None else np.asarray(value, float).reshape(-1))
    if not columns["id"]:
        return pd.DataFrame({name: [] for name in LONG_COLUMNS})
    return pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})


def write_results(results: Iterable, directory, *, attributor=None, settings: dict | None = None,
                  fmt: str = "parquet", rows_per_part: int = 64) -> int:
    """Write (id, result) pairs (as ``Attributor.attribute_dataset`` yields them) to ``directory``.

    settings: what the results depend on (default: the attributor's model, dtype and config);
    a directory holding other settings is refused. Returns the number of rows written.
    A pair holds a result, not its record: a row's prompt and messages are the result's (a
    token-id prompt's success: null), a success's target its target ids as the attributor's
    tokenizer decodes them (null without the attributor).

    Raises InputError for a result a row cannot hold (a word-level one, ``Attribution.aggregate()``:
    aggregate after reading): the first pair before the directory is touched, a later one before
    its row is written (the rows before it are).
    """
    if settings is None:
        if attributor is None:
            raise ConfigError("write_results needs the attributor or the settings")
        settings = {"model": attributor.model_name, "config": attributor.config.to_dict(),
                    "model_dtype": attributor.adapter.dtype_name}
    model = settings.get("model")
    pairs = iter(results)
    first = list(itertools.islice(pairs, 1))
    for key, result in first:
        check_storable(key, result)  # word-level results are refused before the directory is touched
    with ResultWriter(directory, settings, fmt=fmt, rows_per_part=rows_per_part) as writer:
        for key, result in itertools.chain(first, pairs):
            target = None if attributor is None else decoded_target(attributor.tokenizer, result)
            writer.write(result_to_row(key, result, writer.config_hash, model=model, target=target))
    return writer.rows_written
