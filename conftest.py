"""Root pytest configuration (tests/ and benchmarks/).

The repository's top-level ``kernels/`` folder is installed as ``heta_fast.kernels``. Run from
the repository root (``python -m pytest`` puts it first on ``sys.path``), the folder would also
be importable as ``kernels`` and shadow the PyPI package of that name, which transformers
(>= 5.25) imports at start-up. Importing the installed package once, with the root left out of
the path, makes every later ``import kernels`` find it.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))


def _import_installed_kernels() -> None:
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
    try:
        import kernels  # noqa: F401  (the PyPI package, cached in sys.modules)
    except ImportError:
        pass  # transformers releases that do not need it
    finally:
        sys.path[:] = saved


_import_installed_kernels()
