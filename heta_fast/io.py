"""Reading and writing pipeline results (the schema: docs/pipeline.md).

>>> df = read_results("out/")                        # long format, one row per id x target x context token
>>> rows = read_results("out/", form="records")      # one row per record, failures included (ok=False)
>>> res = read_results("out/", form="attributions")  # {id: Attribution | FailedAttribution}
>>> write_results(attr.attribute_dataset(records), "out/", attributor=attr)

Only part files listed in a manifest are read (a part a crash left behind is not); an id
written more than once (``--retry-failed``) is read once: its successful row, else its last.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import InputError
from .pipeline.manifest import manifests
from .pipeline.parts import read_part
from .pipeline.schema import MATRICES, SCHEMA_VERSION, arrow_schema, result_to_row, row_to_result
from .pipeline.writer import ResultWriter

__all__ = ["read_results", "read_table", "write_results", "ResultWriter", "result_to_row", "SCHEMA_VERSION"]

LONG_COLUMNS = ["id", "target_index", "target_token", "context_index", "context_token", "special", "attributed",
                "segment", *MATRICES]


def read_table(directory):
    """Every record's row as one pyarrow Table (schema version SCHEMA_VERSION), one row per id."""
    import pyarrow as pa

    directory = Path(directory).expanduser()
    found = manifests(directory) if directory.is_dir() else []
    if not found:
        raise InputError(f"{directory} holds no heta-fast results (no manifest)")
    tables = [read_part(directory / "parts" / part["file"]) for m in found for part in m.parts]
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
    "records" (DataFrame, one row per record, the stored schema) or "attributions"
    ({id: Attribution | FailedAttribution}, matrices float64 [n_target, n_context])."""
    table = read_table(directory)
    if form == "records":
        return table.to_pandas()
    if form == "attributions":
        return {row["id"]: row_to_result(row) for row in table.to_pylist()}
    if form != "long":
        raise ValueError(f"unknown form {form!r}; choose long, records or attributions")
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
    """
    if settings is None:
        if attributor is None:
            raise ValueError("write_results needs the attributor or the settings")
        settings = {"model": attributor.model_name, "config": attributor.config.to_dict(),
                    "model_dtype": str(attributor.adapter.dtype).removeprefix("torch.")}
    model = settings.get("model")
    with ResultWriter(directory, settings, fmt=fmt, rows_per_part=rows_per_part) as writer:
        for key, result in results:
            writer.write(result_to_row(key, result, writer.config_hash, model=model))
    return writer.rows_written
