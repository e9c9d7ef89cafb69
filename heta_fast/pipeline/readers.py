"""Reading records: JSONL, Parquet and CSV files, ``datasets`` data sets, DataFrames, iterables of dicts.

Every reader yields plain dicts. :class:`Fields` names the record fields the pipeline reads;
:func:`to_jobs` turns records into keyed (id, prompt, target) items, checking the ids first.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import ConfigError, InputError

FORMATS = ("jsonl", "parquet", "csv")


@dataclass(frozen=True)
class Fields:
    """Names of the record fields: the id, the prompt, the target (None with --generate), and
    chat messages (a list of {role, content}) read instead of the prompt when given."""

    id: str = "id"
    prompt: str = "prompt"
    target: str | None = "target"
    messages: str | None = None

    @property
    def context(self) -> str:
        """The field the context is read from: the messages field when given, else the prompt field."""
        return self.messages if self.messages is not None else self.prompt


def input_format(path: str | Path) -> str:
    """jsonl | parquet | csv from the file name (``.json``/``.jsonl``/``.ndjson`` count as JSONL)."""
    suffix = Path(path).suffix.lower()
    fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
           ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise ConfigError(f"cannot tell the format of {path}: name it .jsonl, .parquet or .csv")
    return fmt


def read_file(path: str | Path) -> Iterator[dict]:
    """The records of a JSONL (one JSON object per line), Parquet or CSV file, in file order."""
    path = Path(path).expanduser()
    fmt = input_format(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return iter(pq.read_table(path).to_pylist())
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return iter(frame.to_dict("records"))


def _read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise InputError(f"{path} line {number} is not a JSON object")
            yield record


def read_dataset(name_or_path: str, split: str | None = None) -> Iterator[dict]:
    """A ``datasets`` data set saved with ``save_to_disk`` (or a hub name where the hub is reachable)."""
    import datasets

    try:
        if Path(name_or_path).expanduser().exists():
            data = datasets.load_from_disk(str(Path(name_or_path).expanduser()))
        else:
            data = datasets.load_dataset(name_or_path, split=split)
    except Exception as exc:  # the library raises many kinds; the user sees one line
        raise InputError(f"cannot load the data set {name_or_path!r}: {' '.join(str(exc).split())}") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            if len(data) != 1:
                raise ConfigError(f"the data set has splits {sorted(data)}; choose one with --split")
            split = next(iter(data))
        if split not in data:
            raise ConfigError(f"the data set has no split {split!r}; it has {sorted(data)}")
        data = data[split]
    return iter(data)


def iter_records(source) -> Iterator[dict]:
    """Dicts from a pandas DataFrame, a ``datasets.Dataset``, or any iterable of dicts."""
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas.DataFrame
        return iter(source.to_dict("records"))
    return iter(source)


def record_id(record: dict, fields: Fields, position: int) -> str:
    """The record's id as text; a missing or empty id is a configuration error (wrong --id-field)."""
    if not isinstance(record, dict):
        raise InputError(f"record {position} is not a mapping of fields")
    value = record.get(fields.id)
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
        raise ConfigError(f"record {position} has no {fields.id!r} field; name the id field with --id-field")
    return str(value)


def check_unique(ids: Iterable[str]) -> None:
    """Raise ConfigError naming the first id that occurs twice."""
    seen: set[str] = set()
    for position, key in enumerate(ids):
        if key in seen:
            raise ConfigError(f"duplicate id {key!r} (record {position}); ids must be unique")
        seen.add(key)


def select_shard(items: list, shard: str | None) -> list:
    """Every N-th item from the I-th for ``shard="I/N"`` (0-based); all items for None."""
    if shard is None:
        return items
    index, count = parse_shard(shard)
    return items[index::count]


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {shard!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {shard!r}")
    return index, count
