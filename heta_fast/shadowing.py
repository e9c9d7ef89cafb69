"""The repository's top-level ``kernels/`` folder against the PyPI package named ``kernels``.

The repository keeps its Triton kernels in a top-level ``kernels/`` folder, installed as
``heta_fast.kernels``. Run from the repository root (``python -m heta_fast``, ``python -m pytest``,
a notebook started there), that root is on ``sys.path`` and the folder is importable as
``kernels``, shadowing the PyPI package of that name, which transformers imports at start-up:
loading a model then fails on a missing name. :func:`prefer_installed_kernels` imports the
installed package once, with the root left out of the path, so that every later
``import kernels`` finds it in ``sys.modules``. It does nothing anywhere else.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def shadowing_root(origin: str | None) -> str | None:
    """The repository root when ``origin`` (where ``import kernels`` would load from) is this
    repository's top-level ``kernels/__init__.py``, else None."""
    if origin is None:
        return None
    root = Path(origin).resolve().parent.parent
    if (root / "heta_fast" / "__init__.py").is_file() and (root / "pyproject.toml").is_file():
        return str(root)
    return None


def prefer_installed_kernels() -> bool:
    """Import the installed ``kernels`` package when the repository's folder would shadow it;
    True when it did. Without an installed package (transformers releases that do not need it)
    nothing changes."""
    if "kernels" in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return False
    root = shadowing_root(spec.origin if spec is not None else None)
    if root is None:
        return False
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    try:
        import kernels  # noqa: F401  (the installed package, now cached in sys.modules)
    except ImportError:
        return False
    finally:
        sys.path[:] = saved
    return True
