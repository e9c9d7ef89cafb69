"""Results files: locked against a second writer (a real second process), written under unique
temporary names, refused when of another version or malformed, and valid after SIGINT or SIGKILL
at any moment (a rerun completes them without duplicates)."""
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from heta_fast import Attributor, HETAConfig
from heta_fast.cli import main
from heta_fast.errors import FileLockedError, ResultFormatError
from heta_fast.evaluate.data import load_jsonl
from heta_fast.evaluate.results_file import read_results_file
from heta_fast.evaluate.runner import EvalSettings, run_evaluation
from heta_fast.files import FileLock, atomic_write
from tests.tiny_models import text, tiny_model, tiny_tokenizer

SETTINGS = EvalSettings(samples=2, metrics=("dsa", "f1"))
_HOLDER = """
import sys, time
from heta_fast.files import FileLock
FileLock(sys.argv[1], "results file").acquire(wait=False)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"id": f"e{i}", "prompt": text(5 + i % 20, 6, 7, 8, 9), "target": text(10)} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path / 'r.json' until the test ends (or kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "r.json")], stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_and_nothing_is_written(holder, data, tmp_path):
    attr = Attributor(tiny_model("llama"), tiny_tokenizer(), HETAConfig(num_probes=1))
    out = tmp_path / "r.json"
    with pytest.raises(FileLockedError, match=f"results file {out} is in use by another heta-fast process "
                                              f"\\(process {holder.pid}\\)"):
        run_evaluation(attr, load_jsonl(data), ["rollout"], out, SETTINGS, progress=False)
    assert not out.exists()


def test_the_cli_refuses_a_locked_results_file_in_one_line_before_loading(holder, data, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setattr(Attributor, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["eval", "--model", "smollm2-135m", "--data", str(data), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"in use by another heta-fast process (process {holder.pid})" in err[0]


def test_the_lock_dies_with_its_holder(holder, tmp_path):
    lock = FileLock(tmp_path / "r.json")
    with pytest.raises(FileLockedError):
        lock.acquire(wait=False)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock.acquire(wait=False)  # the kernel released it: no stale lock after a crash
    try:
        assert FileLock(tmp_path / "r.json").acquire(wait=False)  # re-entrant within one process
    finally:
        lock.release()


def test_concurrent_writes_never_share_a_temporary_file(tmp_path):
    path, errors = tmp_path / "r.json", []
    payloads = [json.dumps({"writer": i, "pad": "x" * 100000}) for i in range(8)]

    def write(text):
        try:
            for _ in range(20):
                atomic_write(path, text)
        except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


@pytest.mark.parametrize("payload,match", [
    ({"format": "heta-fast-eval", "version": 99, "header": {}, "records": []}, "version 99"),
    ({"format": "heta-fast-eval", "version": 1, "header": None, "records": []}, "'header' must be an object"),
    ({"format": "heta-fast-eval", "version": 1, "header": {}, "records": None}, "'records' must be a list"),
    ({"format": "heta-fast-eval", "version": 1, "header": {}, "records": [{"example": "a", "ok": True}]},
     "record 0 lacks"),
    ({"format": "something else"}, "not a heta-fast eval results file"),
])
def test_unknown_versions_and_malformed_results_files_are_refused_in_one_line(tiny_model_dir, data, tmp_path, capsys,
                                                                              payload, match):
    out = tmp_path / "r.json"
    out.write_text(json.dumps(payload))
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--methods",
                 "rollout", "--metrics", "dsa", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0] and str(out) in err[0]
    assert json.loads(out.read_text()) == payload  # refused, not overwritten
    with pytest.raises(ResultFormatError):
        read_results_file(out)


def _records(path):
    return json.loads(path.read_text())["records"]


# The eval CLI in a real process, each example slowed to a fixed pace so that the signal lands
# while the run is under way whatever the machine's speed.
_PACED_EVAL = """
import sys, time
from heta_fast.evaluate import runner
from heta_fast.cli import main

score = runner.score_attribution

def paced(*args, **kwargs):
    time.sleep(0.1)
    return score(*args, **kwargs)

runner.score_attribution = paced
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_a_valid_file_that_a_rerun_completes(tiny_model_dir, tmp_path, sig):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"e{i}", "prompt": text(5 + i, 6, 7, 8), "target": text(30)})
                              for i in range(12)))
    out = tmp_path / "r.json"
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--methods",
            "rollout", "--metrics", "dsa", "--no-progress"]
    # SIGINT's default in the child: a shell without job control (a CI script run in the
    # background) starts it ignored, and the child would then never see the Ctrl-C meant here.
    proc = subprocess.Popen([sys.executable, "-c", _PACED_EVAL, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and len(_records(out)) >= 3):
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to continue" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    kept = _records(out)  # valid JSON, whatever moment the signal came
    assert 3 <= len(kept) < 12
    assert main(args) == 0  # the same command again (in this process)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "r.json"]  # no temporary or lock file left
    pairs = [(r["example"], r["method"]) for r in _records(out)]
    assert len(pairs) == len(set(pairs)) == 12
    assert {(r["example"], r["method"]) for r in kept} <= set(pairs)
