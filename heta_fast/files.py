"""Writing files safely: output paths checked before any work, atomic writes under unique
temporary names, and advisory locks that two processes cannot both hold.

Locks are ``flock``/``lockf`` locks on a ``<name>.lock`` file beside the protected path: the
kernel releases them when the holder exits, however it exits (SIGKILL included), so a crashed
run never leaves a file locked. The lock file records the holder's process id for messages.
"""
from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path

from .errors import FileLockedError, OutputError

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """Raise :class:`OutputError` (naming ``path``) unless a file can be created at ``path``.

    Checked by creating and removing a uniquely named file in its folder, so that everything
    the operating system would refuse later (missing folder, read-only file system, /proc, no
    permission) is refused now, before any work.
    """
    path = Path(path).expanduser()
    if str(path) in ("", "."):
        raise OutputError(f"the {what} path is empty")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: the folder {folder} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None
    return path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to a unique temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never a partial one; two writers never share a
    temporary file. Raises :class:`OutputError` naming ``path``.
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise OutputError(f"an output path must be a non-empty str or path; got {type(path).__name__} {path!r}")
    path = Path(path).expanduser()
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data
        os.chmod(tmp, _mode_for(path))  # mkstemp's 0600 would differ from a file written plainly
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporary files :func:`atomic_write` left beside ``path`` when a writer was
    killed mid-write. Call only while holding ``path``'s :class:`FileLock` (no writer is running)."""
    path = Path(path).expanduser()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        _unlink(tmp)


def _mode_for(path: Path) -> int:
    """The permissions ``path`` has, or those a new file gets under the current umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# Locks this process holds: lock file -> [descriptor, how many FileLock objects hold it].
_HELD: dict[str, list[int]] = {}


class FileLock:
    """An exclusive lock on ``<path>.lock``, held from :meth:`acquire` to :meth:`release`.

    ``FileLock(path).acquire(wait=False)`` raises :class:`FileLockedError` at once when another
    process holds it; ``wait=True`` blocks until it is free, calling ``on_wait()`` once if it has
    to wait. Within one process the lock is re-entrant (a second acquire of the same path
    succeeds at once; the lock is released with the last holder). Usable as a context manager.
    """

    def __init__(self, path: str | os.PathLike, what: str = "file"):
        self.path = Path(path).expanduser()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what
        self._key = os.path.abspath(self.lock_path)
        self._held = False

    def acquire(self, wait: bool = True, on_wait=None, poll: float = 0.1) -> "FileLock":
        if self._held:
            return self
        if self._key in _HELD:
            _HELD[self._key][1] += 1
            self._held = True
            return self
        waited = False
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock file {self.lock_path}: {exc.strerror or exc}") from None
            if _try_lock(fd):
                if not self._still_ours(fd):  # removed by its last holder meanwhile: open it again
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                _HELD[self._key] = [fd, 1]
                self._held = True
                return self
            holder = _read_pid(fd)
            os.close(fd)
            if not wait:
                by = f" (process {holder})" if holder else ""
                raise FileLockedError(f"{self.what} {self.path} is in use by another heta-fast process{by}; "
                                      "wait for it to finish or choose another file")
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(poll)

    def _still_ours(self, fd: int) -> bool:
        """False when the lock file was removed or replaced between open and lock (then retry)."""
        try:
            return os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        entry = _HELD[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self._key]
            # Remove the file while still holding the lock: a process that opened it meanwhile
            # sees on locking that it is no longer the file at this path, and opens the new one.
            _unlink(self.lock_path)
            os.close(entry[0])

    def __enter__(self) -> "FileLock":
        return self.acquire(wait=True)

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""
