"""Part files: written whole under a temporary name and renamed into place, read back as Arrow tables."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from .schema import SCHEMA_VERSION, arrow_schema

EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def part_format(path: Path) -> str:
    return "jsonl" if path.suffix == ".jsonl" else "parquet"


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
                    f.write(json.dumps(row, allow_nan=False) + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def read_part(path: Path, columns: list[str] | None = None):
    """A part file as a pyarrow Table of :func:`arrow_schema` (only ``columns`` when given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if part_format(path) == "parquet":
            table = pq.read_table(path, columns=columns)
            version = (table.schema.metadata or {}).get(b"heta_fast_schema_version", b"").decode()
            if version and version != str(SCHEMA_VERSION):
                raise InputError(f"{path}: schema version {version}, this heta-fast reads {SCHEMA_VERSION}")
            return table
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        table = pa.Table.from_pylist(rows, schema=arrow_schema())
        return table.select(columns) if columns else table
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read the part file {path}: {' '.join(str(exc).split())}") from None
