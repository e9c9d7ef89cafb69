"""profiling/gpu_check.py's CPU-side logic: comparison, table, exit codes, and its kernel checks
run for real under the Triton interpreter on the CPU."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "profiling" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_relative_error_and_comparison(gpu_check):
    want = torch.tensor([1.0, -4.0, 2.0])
    assert gpu_check.worst_relative_error(want + torch.tensor([0.0, 0.04, 0.0]), want) == pytest.approx(0.01)
    assert gpu_check.worst_relative_error(torch.tensor([float("nan"), 0, 0]), want) == float("inf")
    assert gpu_check.worst_relative_error(torch.zeros(2), want) == float("inf")  # shape mismatch
    ok = gpu_check.compare("x", (want, want * 2), (want, want * 2), 1e-6, 0.5)
    bad = gpu_check.compare("y", want * 1.1, want, 1e-2, 0.5, peak_mib=12.0)
    assert ok.ok and ok.worst == 0.0 and not bad.ok and bad.worst == pytest.approx(0.1)


def test_table_and_exit_code(gpu_check):
    rows = [gpu_check.Row("kernel a", True, 1e-6, 1e-4, 0.01, 3.0),
            gpu_check.Row("flash", None, None, None, 0.0, None, "flash-attn missing")]
    table = gpu_check.render_table(rows)
    assert "kernel a" in table and "pass" in table and "skip" in table and "flash-attn missing" in table
    assert gpu_check.exit_code(rows) == 0
    rows.append(gpu_check.Row("kernel b", False, 1.0, 1e-4, 0.01, None))
    assert "FAIL" in gpu_check.render_table(rows) and gpu_check.exit_code(rows) == 1


def test_without_cuda_it_stops_at_once_with_one_line(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "no CUDA device" in err


@pytest.mark.interpreter
def test_kernel_checks_run_and_pass_under_the_interpreter(gpu_check):
    rows = gpu_check.kernel_rows(torch.device("cpu"), dtypes=(torch.float32,), shapes=((37, 4, 1, 16),))
    assert len(rows) == 3 + 1 + 2  # flow (plain, window, softcap), value norms, vocab KL (plain, softcap)
    assert all(r.ok for r in rows), gpu_check.render_table(rows)


@pytest.mark.real_model
def test_engine_and_timing_checks_run_end_to_end_on_the_cpu(gpu_check):
    # On the CPU the "GPU" side is the CPU too, so the comparisons pass trivially; what this
    # checks is that every engine path the script drives exists and runs as the script calls it.
    rows = gpu_check.engine_rows(torch.device("cpu"), "The capital of France is", " Paris")
    assert [r.ok for r in rows[:7]] == [True] * 7 and rows[7].ok in (None, True)
    assert [r.check for r in rows[4:7]] == ["engine group of 4, shared passes, CUDA graphs",
                                            "engine group of 4, shared passes, eager",
                                            "engine group of 4, one after another"]
    timing = gpu_check.timing_rows(torch.device("cpu"), [6])
    assert [r.check for r in timing] == ["end to end n=6 float32", "end to end n=6 bfloat16"]
    assert all(r.ok for r in timing)
