"""Part files: written whole under a temporary name and renamed into place, read back as Arrow tables.

A part file holds rows of one schema version (schema.py): a Parquet part carries it in its
metadata, a JSONL row in its ``schema_version``. Reading checks it against that version's schema
and gives the rows in the current one, a column added since read as null; anything else in the
parts folder (another Parquet file, a line that is not a row) is a ResultFormatError naming the file,
as is a row whose contents contradict each other (``row_checks.check_rows``) when a whole part is read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ResultFormatError
from ..textfiles import parse_json
from .row_checks import check_rows
from .schema import READABLE_VERSIONS, arrow_schema, column_names, unstorable_row

EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def part_format(path: Path) -> str:
    return "jsonl" if path.suffix == ".jsonl" else "parquet"


def plain_part_name(name) -> bool:
    """Whether a manifest's part ``name`` is a file name in the parts folder: no folder (``..``,
    ``/``) that would lead out of it, and a part's extension."""
    return (isinstance(name, str) and name == os.path.basename(name) and "\\" not in name
            and os.path.splitext(name)[1] in EXTENSIONS.values() and not name.startswith("."))


def json_line(row: dict) -> str:
    """One JSONL part line (no NaN or infinity: JSON has none)."""
    return json.dumps(row, allow_nan=False) + "\n"


def write_part(path: Path, table) -> None:
    """Write ``table`` (pyarrow, :func:`arrow_schema`) to ``path`` atomically: temp file, fsync, os.replace."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if part_format(path) == "parquet":
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json_line(row))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def row_table(row: dict, fmt: str = "parquet"):
    """``row`` as a one-row Arrow table of :func:`arrow_schema` that a ``fmt`` part can hold; a row
    it cannot (a value of no column's type, a non-finite number in JSONL) becomes its failure row
    (:func:`~heta_fast.pipeline.schema.unstorable_row`), so one row never makes a part unwritable."""
    import pyarrow as pa

    try:
        return _checked_table(row, fmt)
    except (pa.ArrowException, UnicodeError, ValueError, TypeError, OverflowError) as exc:
        return _checked_table(unstorable_row(row, exc), fmt)


def rows_table(rows: list[dict], fmt: str = "parquet"):
    """The rows as one Arrow table of :func:`arrow_schema`, each as :func:`row_table` stores it."""
    import pyarrow as pa

    tables = [row_table(row, fmt) for row in rows]
    return pa.concat_tables(tables).combine_chunks() if tables else arrow_schema().empty_table()


def _checked_table(row: dict, fmt: str):
    import pyarrow as pa

    table = pa.Table.from_pylist([row], schema=arrow_schema())
    if fmt == "jsonl":
        json_line(table.to_pylist()[0])
    return table


# The columns every part of every version has: what resuming reads (ids, failures) and the version.
CORE_COLUMNS = ("id", "ok", "schema_version", "config_hash")


def read_part(path: Path, columns: list[str] | None = None):
    """A part file as a pyarrow Table of the current :func:`arrow_schema` (only ``columns`` when
    given); a part of an older readable version has the columns added since as nulls. A part may
    lack columns of its version but not :data:`CORE_COLUMNS` (version 2 gained ``architecture``
    and ``sinks`` without a new number): those it lacks are null too. A whole part (no ``columns``)
    has its rows checked (``check_rows``); a few columns (resuming reads ids) are read as they are.

    Raises ResultFormatError naming the file: unreadable, of another version, not of the results
    schema, a damaged row (naming its id too)."""
    import pyarrow as pa

    try:
        table = _read_parquet(path, columns) if part_format(path) == "parquet" else _read_jsonl(path, columns)
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, ResultFormatError):
            raise
        raise ResultFormatError(f"cannot read the part file {path}: {' '.join(str(exc).split())}") from None
    if columns is None:
        check_rows(table, path)
    return table


def _read_parquet(path: Path, columns: list[str] | None):
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    version = (schema.metadata or {}).get(b"heta_fast_schema_version", b"").decode()
    expected = arrow_schema(_version(path, version))
    wrong = [name for name in schema.names
             if name not in expected.names or not schema.field(name).type.equals(expected.field(name).type)]
    if wrong or not set(CORE_COLUMNS) <= set(schema.names):
        raise ResultFormatError(f"{path} is not a heta-fast results part: its columns are not those of schema "
                                f"version {version}")
    wanted = columns or column_names()
    return _conform(pq.read_table(path, columns=[c for c in wanted if c in schema.names]), wanted)


def _read_jsonl(path: Path, columns: list[str] | None):
    import pyarrow as pa

    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                rows.append(_jsonl_row(path, number, line))
    table = pa.Table.from_pylist(rows, schema=arrow_schema())  # a column added since: null
    return table.select(columns) if columns else table


def _jsonl_row(path: Path, number: int, line: str) -> dict:
    """The row of a JSONL part's line ``number``, checked to hold exactly its version's columns."""
    row = parse_json(line, f"the part file {path}, line {number}", ResultFormatError)
    if not isinstance(row, dict) or "schema_version" not in row:
        raise ResultFormatError(f"{path}: line {number} is not a results row (a JSON object with the columns of "
                                "the results schema)")
    names = set(arrow_schema(_version(path, row["schema_version"])).names)
    missing, unknown = sorted(set(CORE_COLUMNS) - set(row)), sorted(set(row) - names)
    if missing or unknown:
        raise ResultFormatError(f"{path}: line {number} is not a results row of schema version "
                                f"{row['schema_version']} (missing {missing}, unknown {unknown})")
    return row


def _version(path: Path, version) -> int:
    """The schema version a part declares (text in Parquet metadata, an int in a JSONL row), if readable."""
    number = int(version) if isinstance(version, (str, int)) and str(version).isdigit() else None
    if number is None:
        raise ResultFormatError(f"{path} is not a heta-fast results part: it declares no schema version")
    if number not in READABLE_VERSIONS:
        raise ResultFormatError(f"{path}: schema version {number}, this heta-fast reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}")
    return number


def _conform(table, names: list[str]):
    """``table`` with the columns ``names`` of the current schema, in that order; a column its
    version lacks is all null."""
    import pyarrow as pa

    schema = arrow_schema()
    fields = [schema.field(name) for name in names]
    arrays = [table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))
