"""Reading records: JSONL, Parquet and CSV files, ``datasets`` data sets, DataFrames, iterables of dicts.

Every reader yields plain dicts. :class:`Fields` names the record fields the pipeline reads.

A run checks every id before any work and then attributes the records a few at a time, so it
reads its input twice: the ids, then the records. Files (:class:`FileRecords`), data sets and
DataFrames are read again from their start each time, one batch of rows at a time, and a run over
them holds its ids and the records in flight, not the whole input: a file larger than memory can
be attributed. A one-shot iterator (a generator) is read into a list first (:func:`reiterable`).
"""
from __future__ import annotations

import csv
import datetime
import decimal
import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import ConfigError, InputError
from ..inputs import check_text, describe
from ..textfiles import parse_json, utf8_error

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


def fields_read(fields: Fields, generate: int | None) -> list[str]:
    """The fields a run reads besides the id: the context, and the target unless it is generated."""
    return [fields.context] + ([] if generate else [fields.target])


def input_format(path: str | Path) -> str:
    """jsonl | parquet | csv from the file name (``.json``/``.jsonl``/``.ndjson`` count as JSONL)."""
    suffix = Path(path).suffix.lower()
    fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
           ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise ConfigError(f"cannot tell the format of {path}: name it .jsonl, .parquet or .csv")
    return fmt


# Rows per batch when a Parquet or CSV file, a data set or a DataFrame is read.
READ_BATCH = 1024


class FileRecords:
    """The records of a JSONL (one JSON object per line), Parquet or CSV file, in file order.

    Iterating reads the file from its start, one batch of rows at a time (JSONL: a line at a
    time), so it can be iterated again and never holds the whole file. ``columns(names)``
    iterates records holding only those of ``names`` the file has (Parquet reads no other
    column; JSONL and CSV records are read whole and cut). A file that cannot be read (not
    UTF-8, not JSON, nested too deeply, a malformed CSV row, not Parquet) raises an InputError
    naming it and what is wrong, wherever the reading finds it."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.format = input_format(self.path)
        if not self.path.is_file():
            what = "is a directory, not a file" if self.path.is_dir() else "does not exist"
            raise InputError(f"input file {self.path} {what}")

    def __iter__(self) -> Iterator[dict]:
        return self.columns(None)

    def columns(self, names: list[str] | None) -> Iterator[dict]:
        with self._reading():
            if self.format == "jsonl":
                records = _read_jsonl(self.path)
                yield from records if names is None else ({k: r[k] for k in names if k in r} for r in records)
            elif self.format == "parquet":
                yield from self._parquet(names)
            else:
                yield from self._csv(names)

    def names(self) -> list[str] | None:
        """The file's columns (a Parquet schema, a CSV header), which every record has; None for
        JSONL, whose records each have their own fields."""
        if self.format == "jsonl":
            return None
        with self._reading():
            if self.format == "parquet":
                import pyarrow.parquet as pq

                return list(pq.read_schema(self.path).names)
            with _csv_rows(self.path) as (rows, _):
                return [name for name in _csv_header(self.path, rows) if name]

    def _parquet(self, names: list[str] | None) -> Iterator[dict]:
        import pyarrow.parquet as pq

        file = pq.ParquetFile(self.path)
        if names is not None:
            names = [n for n in names if n in file.schema_arrow.names]
        for batch in file.iter_batches(batch_size=READ_BATCH, columns=names):
            if batch.num_columns == 0:  # none of the names: one empty record per row
                yield from ({} for _ in range(batch.num_rows))
            else:
                yield from batch.to_pylist()

    def _csv(self, names: list[str] | None) -> Iterator[dict]:
        # Every field is parsed, also when only the ids are wanted: a malformed row (an extra
        # field, an unclosed quote, bytes that are not UTF-8) is then found by a run's first
        # reading, before any work, not after hours of it.
        with _csv_rows(self.path) as (rows, raw):
            header = _csv_header(self.path, rows)
            raw.record()
            # A column without a name (a spreadsheet's trailing commas) is no field any flag can name.
            wanted = [n for n in header if n and (names is None or n in names)]
            for row in rows:
                if _stray_quote(raw.record()):
                    raise InputError(f"{self.path}: not a readable CSV file (line {rows.line_num}: a quote inside "
                                     'a field that does not start with one; quote the whole field, "" for a quote)')
                if not row:  # a blank line
                    continue
                if len(row) > len(header):
                    raise InputError(f"{self.path}: not a readable CSV file (line {rows.line_num} has "
                                     f"{len(row)} fields; the header names {len(header)})")
                # A short row lacks its last fields (the record has no such field: a failure row
                # naming it); a field written empty ("" or nothing between two commas) is empty text.
                values = dict(zip(header, row))
                yield {name: values[name] for name in wanted if name in values}  # none wanted: {}

    @contextmanager
    def _reading(self):
        """The errors of the libraries reading the file, as one InputError naming it and what is wrong."""
        try:
            yield
        except UnicodeDecodeError:  # raised by a decoder that knows neither the line nor the file
            raise (utf8_error(self.path) or InputError(f"{self.path}: not UTF-8 text")) from None
        except (*_library_errors(self.format), OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # the file system's: gone, no permission, ...
                raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
            # pyarrow's OSErrors without an errno are about the contents (a corrupt page).
            raise InputError(f"{self.path}: not a readable {_NAMES[self.format]} file ({_reason(exc)})") from None


_NAMES = {"jsonl": "JSONL", "csv": "CSV", "parquet": "Parquet"}


def _library_errors(fmt: str) -> tuple[type[Exception], ...]:
    """What pyarrow raises for a Parquet file it cannot read (imported only when reading one); the CSV
    reader raises its own InputError naming the line (:func:`_csv_rows`)."""
    if fmt == "parquet":
        import pyarrow

        return (pyarrow.ArrowException,)
    return ()


def _reason(exc: Exception) -> str:
    """A library's message in one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# A CSV field may hold a whole long context; the csv module's default limit (128 KiB) would refuse it.
CSV_FIELD_LIMIT = 2**31 - 1


class _RawLines:
    """The lines of a text file as ``csv.reader`` reads them, keeping those of the record it is
    reading: the reader takes exactly one record's lines before it gives the record."""

    def __init__(self, lines):
        self.lines, self.taken = lines, []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.taken.append(line)
        return line

    def record(self) -> str:
        """The raw text of the record read last (and forget it)."""
        text = "".join(self.taken)
        self.taken.clear()
        return text


def _stray_quote(text: str) -> bool:
    """Whether a field of the record ``text`` (its raw lines) that does not start with a quote holds
    one. The csv module reads such a quote as a character (``say "a, b" now`` becomes two fields,
    'say "a' and ' b" now'), so it is refused rather than read as something else (RFC 4180: a field
    holding a quote is quoted, its quotes doubled)."""
    if '"' not in text:
        return False
    at_start, quoted, closed = True, False, False
    for ch in text:
        if quoted:
            quoted, closed = ch != '"', ch == '"'
            continue
        if closed and ch == '"':  # a doubled quote inside a quoted field
            quoted, closed = True, False
            continue
        closed = False
        if ch in ',\r\n':
            at_start = True
        elif ch == '"' and not at_start:
            return True
        else:
            quoted, at_start = ch == '"', False
    return False


@contextmanager
def _csv_rows(path: Path):
    """(rows, raw): a strict ``csv.reader`` over the UTF-8 file (a byte-order mark is dropped),
    whose unclosed quote or text after a closing quote is an error (``csv.Error``), and the
    :class:`_RawLines` it reads, for the checks the reader does not make (:func:`_stray_quote`)."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, encoding="utf-8-sig", newline="") as f:
        raw = _RawLines(f)
        rows = csv.reader(raw, strict=True)
        try:
            yield rows, raw
        except csv.Error as exc:
            raise InputError(f"{path}: not a readable CSV file (line {rows.line_num}: {_reason(exc)})") from None


def _csv_header(path: Path, rows) -> list[str]:
    """The column names of the header line, the first that is not blank; each named once (but
    columns without a name, which no flag can name)."""
    header = next((row for row in rows if row), None)
    if header is None:
        raise InputError(f"{path}: not a readable CSV file (the file is empty: a CSV file starts with a "
                         "header line naming its columns)")
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise InputError(f"{path}: not a readable CSV file (the header names {', '.join(map(repr, twice))} "
                         "more than once)")
    return header


def read_file(path: str | Path) -> FileRecords:
    """The records of a JSONL, Parquet or CSV file (:class:`FileRecords`); raises ConfigError for
    a name without a known suffix and InputError for a missing file, before reading anything."""
    return FileRecords(path)


def _read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark dropped (heta_fast/textfiles.py)
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = parse_json(line, f"{path}:{number}")
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: not a JSON object")
            yield record


def read_dataset(name_or_path: str, split: str | None = None):
    """A ``datasets.Dataset`` saved with ``save_to_disk`` (or a hub name where the hub is reachable),
    the split chosen; iterating it gives dicts, and it can be iterated again (memory-mapped)."""
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
    return data


def is_frame(source) -> bool:
    """Whether ``source`` is a pandas DataFrame (duck-typed: pandas is imported only where used)."""
    return hasattr(source, "to_dict") and hasattr(source, "columns") and hasattr(source, "iloc")  # pandas.DataFrame


def iter_records(source) -> Iterator[dict]:
    """Dicts from a pandas DataFrame (a batch of rows at a time), a ``datasets.Dataset``, or any iterable of dicts."""
    if is_frame(source):
        return (row for start in range(0, len(source), READ_BATCH)
                for row in source.iloc[start : start + READ_BATCH].to_dict("records"))
    return iter(source)


def reiterable(source):
    """``source`` itself when iterating it starts again from the beginning (a list, a DataFrame,
    a ``datasets.Dataset``, :class:`FileRecords`); a one-shot iterator, read into a list."""
    if is_frame(source) or iter(source) is not source:
        return source
    return list(source)


def input_columns(source) -> list[str] | None:
    """The fields of a columnar input (a Parquet or CSV file, a DataFrame, a ``datasets.Dataset``),
    which every record has (a missing value is null, or a CSV row's missing last fields); None for
    an input whose records each have their own (JSONL, dicts)."""
    if isinstance(source, FileRecords):
        return source.names()
    if is_frame(source):
        return [str(name) for name in source.columns]
    names = getattr(source, "column_names", None)
    return names if isinstance(names, list) and hasattr(source, "select_columns") else None  # datasets.Dataset


def id_records(source, fields: Fields, also: Sequence[str] = ()) -> Iterator[dict]:
    """The records of ``source`` holding at least the id field and those of ``also`` they have:
    only the id column where the source is columnar (a file, a data set, a DataFrame), so that
    reading the ids reads little else."""
    if isinstance(source, FileRecords):
        return source.columns([fields.id, *also])
    if is_frame(source) and fields.id in source.columns:
        return iter_records(source[[fields.id]])
    names = getattr(source, "column_names", None)
    if isinstance(names, list) and fields.id in names and hasattr(source, "select_columns"):  # datasets.Dataset
        return iter(source.select_columns([fields.id]))
    return iter_records(source)  # whole records (an input without the id column fails on its first)


def record_id(record: dict, fields: Fields, position: int) -> str:
    """The record's id as text; a missing or empty id is a configuration error (wrong --id-field).

    An id is text, a number (a Parquet decimal too) or a date/time, stored as its text. Anything
    else (a list, a mapping, a Parquet struct, bytes, a boolean) would be stored as its Python
    spelling, and text that is not valid Unicode (a lone surrogate, JSON's "\\ud800") cannot be
    written at all: both are refused (InputError)."""
    if not isinstance(record, dict):
        raise InputError(f"record {position} is not a mapping of fields")
    value = record.get(fields.id)
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
        raise ConfigError(f"record {position} has no {fields.id!r} field; name the id field with --id-field")
    if isinstance(value, str):
        check_text(value, f"id of record {position}")
    elif isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal, datetime.date)):
        raise InputError(f"the id of record {position} is {describe(value)}; an id must be text, a number or a date")
    return str(value)


def _scan(source, fields: Fields, reads: Sequence[str]) -> tuple[list[str], set[str]]:
    """(ids, fields of ``reads`` the input has) in one reading: the columns of a columnar input,
    else the fields some record has (its records are read whole anyway)."""
    columns = input_columns(source)
    wanted = list(reads) if columns is None else []
    keys, present = [], set(columns or ())
    for position, record in enumerate(id_records(source, fields, wanted)):
        keys.append(record_id(record, fields, position))
        present.update(name for name in wanted if name in record)
    check_unique(keys)
    return keys, present


def read_ids(source, fields: Fields) -> list[str]:
    """Every id of ``source`` as text, in input order, checked (present, text or a number, unique)
    before any work (only the id column of a columnar input)."""
    return _scan(source, fields, ())[0]


def read_input(source, fields: Fields, generate: int | None) -> list[str]:
    """The first reading of a run, before any work: every id (as :func:`read_ids` checks them)
    and, in the same reading, the fields the run reads: one that no record has is a wrong flag
    (:func:`check_fields`), one that some records lack makes those records failure rows later.
    Whether a field is missing thus never depends on which record comes first."""
    keys, present = _scan(source, fields, fields_read(fields, generate))
    if keys:
        check_fields(present, fields, generate)
    return keys


def records_at(source, fields: Fields, keys: list[str], positions: list[int]) -> Iterator[dict]:
    """The records at ``positions`` (ascending) of a second reading of ``source``, each checked
    against its id in ``keys`` (:func:`read_ids`): an input that changed in between stops the run
    with a ConfigError (the rows written so far are kept)."""
    wanted = iter(positions)
    next_position = next(wanted, None)
    for position, record in enumerate(iter_records(source)):
        if next_position is None:
            return
        if position == next_position:
            if record_id(record, fields, position) != keys[position]:
                raise ConfigError(f"the input changed while it was read: record {position} now has another id")
            yield record
            next_position = next(wanted, None)
    if next_position is not None:
        raise ConfigError(f"the input changed while it was read: it now ends before record {next_position}")


def check_fields(names, fields: Fields, generate: int | None) -> None:
    """Raise ConfigError when the field names of the input (its columns, or the fields any of its
    records has) lack the context field, or the target field without ``--generate``: a wrong
    flag, not a bad record, so the run stops before any work."""
    if not generate and fields.target not in names:
        raise ConfigError(f"the input has no {fields.target!r} field; name it with --target-field, "
                          "or generate targets with --generate N")
    if fields.context not in names:
        flag = "--messages-field" if fields.messages is not None else "--prompt-field"
        raise ConfigError(f"the input has no {fields.context!r} field; name it with {flag}")


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
