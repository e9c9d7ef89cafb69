"""ResultWriter: rows in, atomic part files and a manifest out, under the output directory's lock.

>>> with ResultWriter("out/", settings) as w:       # settings: model, dtype, config, fields
...     skip = w.completed_ids()                      # ids already written (resume)
...     w.write(result_to_row(...))                   # buffered; a part file per rows_per_part rows
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from .manifest import (
    DirectoryLock,
    Manifest,
    directory_settings,
    manifest_path,
    read_listed_parts,
    settings_hash,
    slot_name,
)
from .parts import EXTENSIONS, row_table, write_part
from .schema import unescape_row

DEFAULT_ROWS_PER_PART = 64


def make_output_directory(directory: Path) -> None:
    """Create ``directory`` and its ``parts`` folder (as needed); OSError when it cannot be created,
    ConfigError when ``directory`` is a file."""
    try:
        (directory / "parts").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"output {directory} is not a directory") from None
        if directory.is_dir() and (directory / "parts").exists():
            raise ConfigError(f"output {directory} holds a file named 'parts' where its part files go") from None
        raise OSError(f"cannot create the output directory {directory}: {exc.strerror or exc}") from None


class ResultWriter:
    """Writes one writer slot (unsharded, or one shard) of an output directory.

    settings: what the results depend on (model, dtype, config dict, fields, generate); they must
    be those of every manifest already in the directory (else ConfigError), read across versions
    (``manifest.same_settings``); ``config_hash`` is then the directory's hash, set on ``open``.
    fmt: "parquet" (default) or "jsonl"; rows_per_part: rows buffered before a part file is written.
    """

    def __init__(self, directory, settings: dict, *, shard: tuple[int, int] | None = None, fmt: str = "parquet",
                 rows_per_part: int = DEFAULT_ROWS_PER_PART):
        if fmt not in EXTENSIONS:
            raise ConfigError(f"unknown output format {fmt!r}; choose parquet or jsonl")
        if rows_per_part < 1:
            raise ConfigError("rows per part must be >= 1")
        self.directory = Path(directory).expanduser()
        self.settings, self.fmt, self.rows_per_part = settings, fmt, rows_per_part
        self.config_hash = settings_hash(settings)
        self.slot = slot_name(shard)
        self._lock = DirectoryLock(self.directory, self.slot)
        self._rows: list = []  # one-row Arrow tables (parts.row_table)
        self.manifest: Manifest | None = None
        self.rows_written = 0

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "ResultWriter":
        make_output_directory(self.directory)
        self._lock.acquire()
        try:
            self.config_hash, self.settings = directory_settings(self.directory, self.settings)
            path = manifest_path(self.directory, self.slot)
            self.manifest = Manifest.load(path) if path.exists() else Manifest(path, self.config_hash, self.settings)
            self._remove_orphans()
            self.manifest.save()
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        """Write the buffered rows as a last part, then release the lock."""
        try:
            if self.manifest is not None:
                self.flush()
        finally:
            self._lock.release()

    def __enter__(self) -> "ResultWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ resume
    def completed_ids(self, retry_failed: bool = False) -> set[str]:
        """Ids with a row in any manifest-listed part (only successful rows when ``retry_failed``), as
        the records gave them (an id stored escaped is given back its text)."""
        done: set[str] = set()
        for table in read_listed_parts(self.directory, columns=["id", "ok", "escaped"]):
            for row in table.to_pylist():
                if row["ok"] or not retry_failed:
                    done.add(unescape_row(row)["id"])
        return done

    # ------------------------------------------------------------------ writing
    def write(self, row: dict) -> None:
        """Buffer one row (:func:`~heta_fast.pipeline.schema.result_to_row`); flush when the part is full.

        A row the part cannot hold is buffered as its failure row (``parts.row_table``): checked
        now, so that it never makes the part, and the other rows in it, unwritable at the flush."""
        self._rows.append(row_table(row, self.fmt))
        if len(self._rows) >= self.rows_per_part:
            self.flush()

    def write_table(self, table) -> None:
        """Buffer the rows of a pyarrow Table of the output schema (the Ray workers' batches)."""
        for row in table.to_pylist():
            self.write(row)

    def flush(self) -> None:
        """Write the buffered rows as one part file, then list it in the manifest."""
        if not self._rows:
            return
        import pyarrow as pa

        seq = len(self.manifest.parts)
        name = f"part-{self.slot}-{seq:06d}{EXTENSIONS[self.fmt]}"
        table = pa.concat_tables(self._rows).combine_chunks()
        try:
            write_part(self.directory / "parts" / name, table)
            self.manifest.parts.append({"file": name, "rows": table.num_rows})
            self.manifest.save()
        except OSError as exc:
            raise OSError(f"cannot write {self.directory / 'parts' / name}: {exc.strerror or exc}") from None
        self.rows_written += table.num_rows
        self._rows = []

    def _remove_orphans(self) -> None:
        """Delete this slot's part and temporary files that its manifest does not list (a crash's leftovers)."""
        listed = {p["file"] for p in self.manifest.parts}
        pattern = re.compile(rf"^\.?part-{re.escape(self.slot)}-\d+\.")
        for path in (self.directory / "parts").iterdir():
            if pattern.match(path.name) and path.name not in listed:
                path.unlink()
