"""Importing any op module (dispatcher, naive, blocked, common) imports no triton and touches no CUDA.

(That ``heta_fast.kernels`` imports nothing of the package is checked on the source in
tests/test_layering.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OPS = ("flow", "value_norm", "vocab_kl")
OP_MODULES = [f"heta_fast.ops.{op}{part}" for op in OPS for part in ("", ".naive", ".blocked", ".common")]


def test_ops_import_touches_neither_triton_nor_cuda():
    code = (
        "import importlib, sys, torch\n"
        f"for name in {OP_MODULES + ['heta_fast.ops.utils']!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert not torch.cuda.is_initialized(), 'cuda initialised'\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr

