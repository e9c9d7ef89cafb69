"""Cache entries: folders whose every file's content hash is recorded when written and verified
when the entry is first used in a process; built under a lock, published by one rename.

An entry is a folder holding its files and ``heta_manifest.json``::

    {"version": 2, "source": {...}, "files": {"model.safetensors": {"size": ..., "sha256": ...}}}

``sha256`` is :func:`file_digest`: the SHA-256 of the SHA-256 digests of the file's 16-MiB
chunks, so that the chunks hash in parallel threads (hashlib releases the GIL). ``source``
identifies what the entry was built from; an entry whose source differs is rebuilt.

:func:`ensure_entry` returns a verified entry: it checks the manifest, the sizes and the hashes
(once per process), and otherwise takes the entry's lock (``<folder>.lock``; a second process
waits, then finds the entry built), builds it into a uniquely named temporary folder, records
the hashes and renames the folder into place. A mismatch is reported with one message and the
entry rebuilt; a rebuilt entry leaves no copy behind (the old folder and any temporary folder
of a crashed build are removed under the lock).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..files import FileLock

MANIFEST = "heta_manifest.json"
MANIFEST_VERSION = 2
CHUNK = 16 << 20
# Entries verified in this process: folder -> (the manifest's (inode, mtime), the source) when verified.
_VERIFIED: dict[Path, tuple] = {}


class _StderrAtEmit(logging.Handler):
    """Writes each notice to whatever ``sys.stderr`` is when it is emitted (a redirected stream,
    a test's capture), as ``[heta-fast] message``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"[heta-fast] {record.getMessage()}", file=sys.stderr, flush=True)


# What the model cache tells a user while it works (downloading, converting, waiting for another
# process, rebuilding a damaged entry): on stderr by default; a program silences or redirects it
# through the logging module, the command line with -q (quiet_notices).
NOTICES = logging.getLogger("heta_fast.notices")
if not NOTICES.handlers:
    NOTICES.addHandler(_StderrAtEmit())
    NOTICES.setLevel(logging.INFO)
    NOTICES.propagate = False


def log(msg: str) -> None:
    NOTICES.info(msg)


@contextlib.contextmanager
def quiet_notices(quiet: bool = True):
    """Within the block, no notice is shown when ``quiet`` (the level is restored after)."""
    level = NOTICES.level
    if quiet:
        NOTICES.setLevel(logging.WARNING)
    try:
        yield
    finally:
        NOTICES.setLevel(level)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 over the SHA-256 digests of ``path``'s 16-MiB chunks (hex), chunks hashed in parallel."""
    size = os.path.getsize(path)
    count = max(1, -(-size // CHUNK))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        def chunk(i: int) -> bytes:
            return hashlib.sha256(os.pread(fd, CHUNK, i * CHUNK)).digest()

        workers = min(count, os.cpu_count() or 1, 8)
        if workers == 1:
            digests = [chunk(i) for i in range(count)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                digests = list(pool.map(chunk, range(count)))
    finally:
        os.close(fd)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def read_manifest(folder: Path) -> dict | None:
    """The entry's manifest, or None when it is missing, unreadable or of another version."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("files"), dict):
        return None
    return data


def problem(folder: Path, source: dict | None = None, hashes: bool = True) -> str | None:
    """What is wrong with the entry (None when it is complete and, with ``hashes``, intact)."""
    if not folder.is_dir():
        return "missing"
    manifest = read_manifest(folder)
    if manifest is None:
        return "it has no manifest of this heta-fast version (an interrupted or older build)"
    if source is not None and manifest.get("source") != source:
        return "it was built from another source"
    for name, rec in manifest["files"].items():
        path = folder / name
        if not isinstance(rec, dict) or not path.is_file() or path.stat().st_size != rec.get("size"):
            return f"{name} is missing or has another size than recorded"
    if hashes:
        for name, rec in manifest["files"].items():
            if file_digest(folder / name) != rec.get("sha256"):
                return f"{name} does not match its recorded content hash"
    return None


def _stamp(folder: Path) -> tuple[int, int] | None:
    try:
        st = (folder / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def is_verified(folder: Path, source: dict | None = None) -> bool:
    """True when this process verified the entry, built from ``source``, and its manifest has not
    been replaced since."""
    stamp = _stamp(folder)
    return stamp is not None and _VERIFIED.get(folder) == (stamp, source)


def ensure_entry(folder: Path, build: Callable[[Path], None], what: str, source: dict | None = None,
                 hashes: bool = True, force: bool = False) -> Path:
    """The entry at ``folder``, built by ``build(tmp_folder)`` when missing or damaged.

    ``build`` writes the entry's files into the empty folder it is given. hashes: verify the
    content hashes (once per process); without, only the manifest and the sizes are checked.
    force: rebuild even an intact entry (one whose files the loader then could not use; the
    caller has said why).
    """
    folder = Path(folder)
    if not force and is_verified(folder, source):
        return folder
    found = "forced" if force else problem(folder, source, hashes)
    if found is None:
        if hashes:
            _VERIFIED[folder] = (_stamp(folder), source)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder, what).acquire(wait=True, on_wait=lambda: log(f"waiting for another process building {what} "
                                                                         f"in {folder} ...")):
        if not force:
            found = problem(folder, source, hashes)  # another process may have built it while we waited
            if found is None:
                _VERIFIED[folder] = (_stamp(folder), source)
                return folder
        if folder.exists() and not force:
            log(f"{what} in {folder}: {found}; rebuilding it")
        _remove_leftovers(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.partial-"))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from its other users
            build(tmp)
            files = {p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"version": MANIFEST_VERSION, "source": source, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            if folder.exists():
                old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.old-"))
                os.replace(folder, old / "entry")
            os.replace(tmp, folder)
        finally:
            _remove_leftovers(folder)
    _VERIFIED[folder] = (_stamp(folder), source)
    return folder


def _remove_leftovers(folder: Path) -> None:
    """Temporary and replaced folders of this entry (call with its lock held: no build is running)."""
    for prefix in (".partial-", ".old-"):
        for path in folder.parent.glob(f"{folder.name}{prefix}*"):
            shutil.rmtree(path, ignore_errors=True)


def forget(folder: Path) -> None:
    """Drop the entry from this process's verified set (the next use verifies it again)."""
    _VERIFIED.pop(Path(folder), None)
