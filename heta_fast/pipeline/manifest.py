"""An output directory: its lock, its manifests of completed part files, and the settings hash.

Layout (docs/pipeline.md)::

    DIR/manifest.json                  completed parts of the unsharded writer
    DIR/manifest.shard-I-of-N.json     completed parts of shard I of N
    DIR/parts/part-<slot>-<seq>.<ext>  part files (Parquet or JSONL)
    DIR/.lock, DIR/.lock.<slot>        advisory locks (flock; released by the kernel on any exit)

A manifest is replaced atomically after each part file is renamed into place, so a part file
that is not listed (a crash between the two) is ignored by readers and removed by the next
writer. The unsharded writer holds ``.lock`` exclusively; a shard holds it shared and its own
``.lock.<slot>`` exclusively: two writers of the same output are refused, shards of one run are not.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import HETAConfig
from ..errors import ConfigError, OutputInUseError, ResultFormatError
from ..files import atomic_write
from ..textfiles import decode_utf8, parse_json
from .parts import plain_part_name, read_part
from .schema import READABLE_VERSIONS, SCHEMA_VERSION

MANIFEST_PREFIX = "manifest"


def settings_hash(settings: dict) -> str:
    """16 hex digits of the SHA-256 of the settings as sorted JSON (model, dtype, config, fields)."""
    text = json.dumps({"schema_version": SCHEMA_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def slot_name(shard: tuple[int, int] | None) -> str:
    return "main" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"


def manifest_path(directory: Path, slot: str) -> Path:
    name = f"{MANIFEST_PREFIX}.json" if slot == "main" else f"{MANIFEST_PREFIX}.{slot}.json"
    return directory / name


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON atomically over ``path`` (:func:`heta_fast.files.atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


@dataclass
class Manifest:
    """One writer's record of its completed part files (in write order) and the run's settings."""

    path: Path
    config_hash: str
    settings: dict
    parts: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """The manifest at ``path``; ResultFormatError naming it when it is unreadable, not JSON, of
        another version or of another shape (its fields, each part's plain file name and row count)."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ResultFormatError(f"{path} is not a readable heta-fast manifest ({exc})") from None
        data = parse_json(decode_utf8(raw, path, ResultFormatError), f"the manifest {path}", ResultFormatError)
        return cls(path, *_fields(path, data))

    def save(self) -> None:
        write_json_atomic(self.path, {"schema_version": SCHEMA_VERSION, "config_hash": self.config_hash,
                                      "settings": self.settings, "parts": self.parts})


def _fields(path: Path, data) -> tuple[str, dict, list[dict]]:
    """(config_hash, settings, parts) of a manifest's JSON ``data``, checked."""
    def fail(problem: str):
        raise ResultFormatError(f"{path} is not a heta-fast manifest: {problem}")

    if not isinstance(data, dict):
        fail(f"it holds a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ResultFormatError(f"{path}: schema version {version!r}, this heta-fast reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}")
    if not isinstance(data.get("config_hash"), str):
        fail("its 'config_hash' is not text")
    settings, parts = data.get("settings", {}), data.get("parts", [])
    if not isinstance(settings, dict):
        fail("its 'settings' is not an object")
    if not isinstance(parts, list):
        fail("its 'parts' is not a list")
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            fail(f"part {i} is not an object with 'file' and 'rows'")
        if not plain_part_name(part.get("file")):
            # A name with a folder would read (or, resuming, count as written) a file outside the parts folder.
            fail(f"part {i} has {part.get('file')!r}, not a plain part file name in the parts folder")
        rows = part.get("rows")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            fail(f"part {i} ({part['file']}) has no row count (rows: {rows!r})")
    return data["config_hash"], settings, list(parts)


def manifests(directory: Path) -> list[Manifest]:
    """Every manifest in ``directory`` (unsharded first, then shards by name)."""
    paths = sorted(Path(directory).glob(f"{MANIFEST_PREFIX}*.json"), key=lambda p: (p.name != "manifest.json", p.name))
    return [Manifest.load(p) for p in paths]


def read_listed_parts(directory: Path, columns: list[str] | None = None) -> list:
    """Every part file that a manifest of ``directory`` lists, as Arrow tables (:func:`read_part`;
    only ``columns`` when given), in manifest order.

    Raises ResultFormatError naming the file when a part is missing or holds another number of rows
    than its manifest counts (a JSONL part cut at a line boundary reads as fewer whole rows)."""
    tables = []
    for manifest in manifests(directory):
        for part in manifest.parts:
            path = Path(directory) / "parts" / part["file"]
            if not path.is_file():
                raise ResultFormatError(f"the part file {path} that {manifest.path.name} lists is missing")
            table = read_part(path, columns)
            if table.num_rows != part["rows"]:
                raise ResultFormatError(f"the part file {path} holds {table.num_rows} rows where {manifest.path.name} "
                                        f"lists {part['rows']}: it was cut short or replaced")
            tables.append(table)
    return tables


def same_settings(recorded: dict, settings: dict) -> bool:
    """Whether a manifest's recorded settings are ``settings``, read across versions: the HETA
    config fields it does not name count as their defaults (``HETAConfig.completed``), so a
    directory written before a field was added resumes under a run that leaves the field alone."""

    def today(s: dict) -> dict:
        s = json.loads(json.dumps(s, default=str))  # as a manifest stores it (tuples are lists)
        if isinstance(s.get("config"), dict):
            s["config"] = HETAConfig.completed(s["config"])
        return s

    return today(recorded) == today(settings)


def directory_settings(directory: Path, settings: dict) -> tuple[str, dict]:
    """The (hash, settings) the rows written to ``directory`` carry: the directory's own when it
    already holds results of these settings (as :func:`same_settings` reads them; its hash stays
    the directory's, so one output never mixes two hashes), this run's when it holds none.

    Raises ConfigError (one line) when it holds results of other settings."""
    config_hash = settings_hash(settings)
    found = manifests(directory)
    for m in found:
        if m.config_hash != config_hash and not same_settings(m.settings, settings):
            raise ConfigError(f"{directory} holds results of another configuration (settings hash {m.config_hash}, "
                              f"this run {config_hash}); rerun with the same settings or choose a new --output")
    return (found[0].config_hash, found[0].settings) if found else (config_hash, settings)


class DirectoryLock:
    """The writer's locks on an output directory; raises OutputInUseError when another writer holds them."""

    def __init__(self, directory: Path, slot: str):
        self.directory, self.slot = Path(directory), slot
        self._fds: list[int] = []

    def acquire(self) -> "DirectoryLock":
        import fcntl

        wanted = [(".lock", fcntl.LOCK_EX if self.slot == "main" else fcntl.LOCK_SH)]
        if self.slot != "main":
            wanted.append((f".lock.{self.slot}", fcntl.LOCK_EX))
        try:
            for name, mode in wanted:
                fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o644)
                self._fds.append(fd)
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise OutputInUseError(f"output directory {self.directory} is in use by another heta-fast run; "
                                          "wait for it to finish or choose another --output") from None
        except OSError as exc:
            self.release()
            raise OSError(f"cannot lock {self.directory}: {exc.strerror or exc}") from None
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
