"""Progress of the CLI on stderr: a live line on a terminal (erased at the end), nothing for short
work without one, the estimate first for long work, and ``-q`` silencing all of it; stdout and
the --json file stay clean."""
import io
import os
import pty
import select
import subprocess
import sys

import pytest

from heta_fast import Attribution
from heta_fast.cli import main
from heta_fast.progress import ProgressEvent

ARGS = ["--prompt", "w1 w2 w3 w4 w5 w6", "--target", "w7 w8 w9", "--estimator", "exact", "--num-probes", "2"]


class _Terminal(io.StringIO):
    """stderr that says it is a terminal: the CLI takes its live path."""

    def isatty(self):
        return True


def _cli(argv, monkeypatch, capsys, terminal=True):
    err = _Terminal() if terminal else None
    if terminal:
        monkeypatch.setattr(sys, "stderr", err)
    code = main(argv)
    out, captured_err = capsys.readouterr()
    return code, out, err.getvalue() if terminal else captured_err


def test_on_a_real_terminal_progress_goes_to_stderr_and_stdout_stays_clean(tiny_model_dir, tmp_path):
    js = tmp_path / "r.json"
    master, slave = pty.openpty()
    argv = [sys.executable, "-m", "heta_fast", "attribute", "--model", str(tiny_model_dir), *ARGS, "--json", str(js)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path)
    os.close(slave)
    seen = b""
    while True:  # read the terminal while the process runs (a full pty would block it)
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode()
    assert proc.wait() == 0
    os.close(master)
    err = seen.decode()
    for phase in ("[1/4] forward 0/1 pass", "[2/4] flow", "[3/4] curvature 0/", "3/3 target tokens done",
                  "[4/4] information 6/6 masked variants"):
        assert phase in err, (phase, err)
    assert err.endswith("\r\x1b[K")  # the live line is erased before the result
    assert "target 0: 'w7'" in out and "\x1b[K" not in out and "curvature 0/" not in out
    assert Attribution.from_json(js).scores.shape == (3, 6)


def test_quiet_silences_the_terminal_and_changes_nothing_else(tiny_model_dir, tmp_path, monkeypatch, capsys):
    base = ["attribute", "--model", str(tiny_model_dir), *ARGS]
    code, out_loud, err_loud = _cli(base + ["--json", str(tmp_path / "a.json")], monkeypatch, capsys)
    assert code == 0 and "[3/4] curvature" in err_loud
    code, out_quiet, err_quiet = _cli(base + ["-q", "--json", str(tmp_path / "b.json")], monkeypatch, capsys)
    assert code == 0 and err_quiet == ""
    assert out_quiet.split("time:")[0] == out_loud.split("time:")[0]
    loud, quiet = (Attribution.from_json(tmp_path / name).scores for name in ("a.json", "b.json"))
    assert (loud == quiet).all()


def test_without_a_terminal_short_work_prints_nothing_on_stderr(tiny_model_dir, monkeypatch, capsys):
    code, out, err = _cli(["attribute", "--model", str(tiny_model_dir), *ARGS], monkeypatch, capsys, terminal=False)
    assert code == 0 and err == "" and "target 2: 'w9'" in out


@pytest.mark.parametrize("quiet", [False, True])
def test_long_work_prints_its_estimate_first(tiny_model_dir, monkeypatch, capsys, quiet):
    from heta_fast import progress

    monkeypatch.setattr(progress, "ESTIMATE_THRESHOLD_FLOPS", 0.0)  # the tiny model's work counts as long
    code, out, err = _cli(["attribute", "--model", str(tiny_model_dir), *ARGS] + (["-q"] if quiet else []),
                          monkeypatch, capsys)
    assert code == 0
    if quiet:
        assert err == ""
        return
    text = err.replace("\r\x1b[K", "\n")
    estimate = text.index("heta-fast: estimate: about ")
    assert estimate < text.index("[1/4] forward")  # before any work
    lines = text[estimate:].splitlines()
    assert "  curvature: 36 HVPs in " in "\n".join(lines[:6])  # 3 targets x 6 tokens x 2 probes
    assert any(line.startswith("  information: 6 masked variants in 1 pass") for line in lines[:6])
    assert any(line.startswith("  expected memory: about ") for line in lines[:6])
    assert "estimate" not in out


def test_the_default_threshold_separates_the_demo_from_a_long_target():
    """The demo (about 6e11 operations on SmolLM2-135M) stays under it; 200 target tokens are far
    over it. Counted with the default model's sizes, without loading it."""
    from heta_fast.progress import ESTIMATE_THRESHOLD_FLOPS, work_flops

    params, probes = 134_515_008, 16
    demo = work_flops(params, 28, probes * 28, round(27 * (27 / 2 + 1)))
    long_target = work_flops(params, 230, 200 * probes * 230, round(31 * (31 / 2 + 200)))
    assert demo < ESTIMATE_THRESHOLD_FLOPS < long_target


def test_an_error_during_the_work_erases_the_live_line_and_stays_one_line(tiny_model_dir, monkeypatch, capsys):
    from heta_fast.engine import Attributor
    from heta_fast.errors import NonFiniteError

    def fail(self, *args, **kwargs):
        kwargs["progress"](ProgressEvent("forward", 0, 1, "pass", 0.0))
        raise NonFiniteError("the model produced non-finite log-probabilities for this input")

    monkeypatch.setattr(Attributor, "attribute", fail)
    code, _, err = _cli(["attribute", "--model", str(tiny_model_dir), *ARGS], monkeypatch, capsys)
    assert code == 2 and "[1/4] forward 0/1 pass" in err
    after = err.rsplit("\r\x1b[K", 1)[1]
    assert after == "heta-fast: error: the model produced non-finite log-probabilities for this input\n"
