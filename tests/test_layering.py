"""The architecture's one-way dependencies, checked on the source (no import is executed).

request -> model layer -> signals -> combine -> result: the model layer knows no signal, a
signal knows no other signal's internals, the kernels know nothing of the package, and the
oracle (reference.py) is imported by tests and benchmarks only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "heta_fast"
KERNELS = ROOT / "kernels"


def _module_name(path: Path) -> str:
    if path.is_relative_to(KERNELS):
        parts = ("heta_fast", "kernels", *path.relative_to(KERNELS).with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _offenders(files, forbidden) -> list[str]:
    return [f"{f.relative_to(ROOT)} imports {m}" for f in files for m in sorted(_imports(f))
            if any(m == x or m.startswith(x + ".") for x in forbidden)]


def test_nothing_in_the_package_imports_the_oracle():
    files = [f for f in _files(PACKAGE) if f.name != "reference.py"]
    assert _offenders(files, ["heta_fast.reference"]) == []


def test_the_kernels_import_nothing_of_the_package():
    outside = [line for line in _offenders(_files(KERNELS), ["heta_fast"])
               if not line.split(" imports ")[1].startswith("heta_fast.kernels")]
    assert outside == []


def test_the_model_layer_and_the_ops_know_no_signal_engine_or_result():
    upper = ["heta_fast.signals", "heta_fast.engine", "heta_fast.combine", "heta_fast.result",
             "heta_fast.evaluate", "heta_fast.cli"]
    assert _offenders(_files(PACKAGE / "model"), upper) == []
    assert _offenders(_files(PACKAGE / "ops"), upper + ["heta_fast.model"]) == []


@pytest.mark.parametrize("signal", ["flow", "curvature", "information"])
def test_a_signal_reads_no_other_signal(signal):
    others = [f"heta_fast.signals.{s}" for s in ("flow", "curvature", "information") if s != signal]
    assert _offenders(_files(PACKAGE / "signals" / signal), others + ["heta_fast.engine"]) == []


def test_the_check_sees_relative_imports():
    # The checker itself: a relative import two levels up resolves to the package's module.
    names = _imports(PACKAGE / "signals" / "flow" / "gate.py")
    assert "heta_fast.ops.flow" in names and "heta_fast.model.capture" in names


def test_every_package_folder_is_installed():
    # pyproject lists the packages explicitly (kernels/ is mapped to heta_fast.kernels); a new
    # folder missing from the list would import in the editable install and vanish from a wheel.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {_module_name(init) for init in PACKAGE.rglob("__init__.py") if "__pycache__" not in init.parts}
    folders.add("heta_fast.kernels")
    assert listed == folders
