"""Run from the repository root, ``import heta_fast`` makes ``import kernels`` find the installed
PyPI package, not the repository's top-level ``kernels/`` folder (heta_fast/shadowing.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

from heta_fast.shadowing import shadowing_root

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = subprocess.run([sys.executable, "-c", "import kernels"], cwd="/", capture_output=True).returncode == 0


def _kernels_file(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code + "; import kernels; print(kernels.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_repository_folder_is_recognised_and_nothing_else(tmp_path):
    assert shadowing_root(str(ROOT / "kernels" / "__init__.py")) == str(ROOT)
    (tmp_path / "kernels").mkdir()
    assert shadowing_root(str(tmp_path / "kernels" / "__init__.py")) is None
    assert shadowing_root(None) is None


@pytest.mark.skipif(not INSTALLED, reason="no installed kernels package to prefer")
def test_import_heta_fast_from_the_root_prefers_the_installed_package():
    assert Path(_kernels_file("pass")).parent == ROOT / "kernels"  # what happens without heta_fast
    assert not Path(_kernels_file("import heta_fast")).is_relative_to(ROOT)


def test_a_tokenizer_loads_from_the_root(tmp_path):
    """transformers imports ``kernels`` while loading a tokenizer; from the repository root that
    fails on the repository's folder (transformers 5.25 with the PyPI package installed) unless
    heta_fast was imported first."""
    from tests.tiny_models import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path)
    code = f"import heta_fast; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
