"""The eval results file: a header identifying the run and one record per (example, method).

Written atomically (a uniquely named temporary file, then a rename) so that the file on disk is
always complete; read back with every structural field checked, so that a file of another
version or a malformed one is refused in one line (:class:`~heta_fast.errors.ResultFormatError`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..config import HETAConfig
from ..errors import InputError, ResultFormatError
from ..files import atomic_write

FORMAT = "heta-fast-eval"
VERSION = 1


@dataclass
class ResultsFile:
    """The JSON results file: a header identifying the run and one record per (example, method)."""

    path: Path
    header: dict
    records: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path, header: dict) -> "ResultsFile":
        """Load ``path`` to continue it (its header must match), or start a new one."""
        path = Path(path)
        if not path.exists():
            return cls(path, header)
        old, records = read_results_file(path)
        diffs = _differences(old, header)
        if diffs:
            detail = "; ".join(f"{k}: {a!r} != {b!r}" for k, a, b in diffs)
            raise InputError(f"{path} was written with other settings ({detail}); "
                             "use the same settings to continue it, or another --out")
        return cls(path, {**header, "data": old.get("data", header.get("data"))}, records)

    def absorb(self, paths: Sequence[str | Path],
               check: Callable[[str | Path, list[dict]], None] | None = None) -> int:
        """Add the records of other results files written with the same settings (e.g. the shards
        of a sharded run) that this file does not hold yet, in one save; returns how many.
        ``check(path, records)`` may refuse a file's records (an error) before any is taken over."""
        done, new = self.done(), []
        for path in paths:
            if Path(path).resolve() == self.path.resolve():
                continue
            if not Path(path).exists():
                raise InputError(f"no such results file to merge: {path}")
            records = ResultsFile.open(path, self.header).records
            if check is not None:
                check(path, records)
            for r in records:
                if (r["example"], r["method"]) not in done:
                    done.add((r["example"], r["method"]))
                    new.append(r)
        if new:
            self.add(new)
        return len(new)

    def done(self) -> set[tuple[str, str]]:
        return {(r["example"], r["method"]) for r in self.records}

    def add(self, records: Iterable[dict]) -> None:
        self.records.extend(records)
        self.save()

    def save(self) -> None:
        # A uniquely named sibling temporary file, then a rename: the file on disk is always complete.
        payload = {"format": FORMAT, "version": VERSION, "header": self.header, "records": self.records}
        atomic_write(self.path, json.dumps(payload, indent=1))


def read_results_file(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of an eval results file, or ``ResultFormatError`` naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ResultFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ResultFormatError(f"{path} exists but is not a results file ({_one_line(exc)}); "
                                "choose another --out") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResultFormatError(f"{path} exists but is not a heta-fast eval results file; choose another --out")
    if data.get("version") != VERSION or isinstance(data.get("version"), bool):
        raise ResultFormatError(f"{path} is a results file of version {data.get('version')!r}; this heta-fast "
                                f"reads version {VERSION}")
    header, records = data.get("header"), data.get("records")
    if not isinstance(header, dict):
        raise ResultFormatError(f"{path}: 'header' must be an object, got {type(header).__name__}")
    if not isinstance(records, list):
        raise ResultFormatError(f"{path}: 'records' must be a list, got {type(records).__name__}")
    for i, r in enumerate(records):
        ok = (isinstance(r, dict) and isinstance(r.get("example"), str) and isinstance(r.get("method"), str)
              and isinstance(r.get("ok"), bool))
        if not ok:
            raise ResultFormatError(f"{path}: record {i} lacks a string 'example', a string 'method' or a "
                                    "boolean 'ok'")
    return header, records


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every identity field (model, metric settings, HETA config) that differs;
    a HETAConfig field the old file does not name counts as its default (``HETAConfig.completed``)."""
    out = []
    old = _upgrade_header(old)
    for section in ("model", "model_dtype", "settings", "heta_config"):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            if section == "heta_config":
                a = {k: v for k, v in HETAConfig.completed(a).items() if k in a or k in b}  # b omits cost fields
            out += [(f"{section}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append((section, a, b))
    return out


def _upgrade_header(header: dict) -> dict:
    """A header written when the model's dtype was a HETAConfig field (``heta_config.dtype``,
    beside a ``device`` that never decided anything) in today's form (``model_dtype``)."""
    cfg = header.get("heta_config")
    if not isinstance(cfg, dict) or "dtype" not in cfg:
        return header
    cfg = {k: v for k, v in cfg.items() if k not in ("dtype", "device")}
    return {**header, "heta_config": cfg, "model_dtype": header.get("heta_config", {}).get("dtype")}
