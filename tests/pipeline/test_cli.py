"""heta-fast run: the command end to end, one-line errors with exit 2, and kills at random points then resumed."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from heta_fast.cli import main
from heta_fast.io import read_results
from heta_fast.pipeline.manifest import DirectoryLock
from tests.pipeline.conftest import (
    BAD,
    UNREADABLE,
    assert_same_results,
    corrupt_prompts,
    make_records,
    write_jsonl,
    write_unreadable,
)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", "-q", *map(str, args)])
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "in.jsonl", make_records(8))


def test_run_writes_reruns_and_refuses_other_settings(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", out) == (0, "")
    table = read_results(out, form="records")
    assert sorted(table.id) == sorted(f"r{i}" for i in range(8))
    assert sorted(table.loc[~table.ok, "id"]) == sorted(k for k in BAD if int(k[1:]) < 8)
    assert main(["run", "--model", str(tiny_model_dir), "--input", data, "--output", str(out)]) == 0
    assert "0 attributed, 0 failed, 8 skipped" in capsys.readouterr().err
    code, err = run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", out, "--seed", "3")
    assert code == 2 and "another configuration" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra,message", [
    (["--messages-field", "messages"], "no 'messages' field; name it with --messages-field"),
    (["--prompt-field", "question"], "no 'question' field; name it with --prompt-field"),
    (["--generate", "0"], "--generate: must be an integer >= 1"),
    (["--memory-budget", "lots"], "--memory-budget"),
    (["--target-field", "answer"], "no 'answer' field"),
    (["--id-field", "key"], "--id-field"),
    (["--ray", "--memory-per-worker", "lots"], "--memory-per-worker must be a number of bytes"),
])
def test_configuration_errors_are_one_line_exit_2(tiny_model_dir, data, tmp_path, capsys, extra, message):
    code, err = run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", tmp_path / "out", *extra)
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_duplicate_ids_and_a_second_writer_are_refused(tiny_model_dir, tmp_path, capsys):
    records = make_records(4)
    dup = write_jsonl(tmp_path / "dup.jsonl", records + records[:1])
    code, err = run_cli(capsys, "--model", tiny_model_dir, "--input", dup, "--output", tmp_path / "out")
    assert code == 2 and "duplicate id 'r0'" in err and not (tmp_path / "out").exists()
    data = write_jsonl(tmp_path / "in.jsonl", records)
    (tmp_path / "busy").mkdir()
    with DirectoryLock(tmp_path / "busy", "main"):
        code, err = run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", tmp_path / "busy")
    assert code == 2 and "in use by another heta-fast run" in err and len(err.splitlines()) == 1


def _start(model_dir, data, out, cwd):
    # cwd outside the repository: its kernels/ folder would shadow the installed package.
    cmd = [sys.executable, "-m", "heta_fast", "run", "-q", "--model", str(model_dir), "--input", data,
           "--output", str(out), "--rows-per-part", "2"]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)


def _interruptible():
    # A shell without job control starts a background job with SIGINT ignored, and a Python
    # child keeps it ignored: give the child SIGINT's default, the Ctrl-C this test means.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _opened_since(out, started: float) -> bool:
    """The writer has opened the directory (it saves its manifest on opening) since ``started``."""
    try:
        return (out / "manifest.json").stat().st_mtime >= started
    except FileNotFoundError:
        return False


def test_killed_at_random_points_then_resumed_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    from heta_fast import Attributor
    from heta_fast.pipeline.run import run_to_directory

    records = make_records(12, seed=1)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    run_to_directory(attributor, records, tmp_path / "expected", progress="quiet")
    expected = read_results(tmp_path / "expected", form="attributions")
    seed = int(time.time())
    rng, out = random.Random(seed), tmp_path / "out"
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        started = time.time()
        proc = _start(tiny_model_dir, data, out, tmp_path)
        deadline = time.monotonic() + 60
        while not _opened_since(out, started) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        # 130: interrupted and shut down cleanly; -sig: the signal landed while the interpreter was
        # shutting down (after the run); 0: the run had finished.
        assert proc.returncode in (0, 130, -sig), (seed, sig, err)
        if proc.returncode == 130:
            assert "run the same command again" in err
        read_results(out, form="records")  # readable after every kill
    proc = _start(tiny_model_dir, data, out, tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    table = read_results(out, form="records")
    assert len(table) == 12 and table.id.is_unique, seed
    assert not [p for p in os.listdir(out / "parts") if p.endswith(".tmp")]
    assert_same_results(read_results(out, form="attributions"), expected)


def test_shared_passes_give_the_numbers_of_one_record_at_a_time(tiny_model_dir, tmp_path, capsys):
    """--batch-requests on (groups share their model passes) against off (one record after another):
    the same rows, the same failures, numbers equal to float32 rounding."""
    data = write_jsonl(tmp_path / "in.jsonl", make_records(10, seed=2))
    for mode in ("on", "off"):
        code, err = run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", tmp_path / mode,
                            "--batch-requests", mode)
        assert (code, err) == (0, "")
    got, want = (read_results(tmp_path / mode, form="attributions") for mode in ("on", "off"))
    want = {k: v for k, v in want.items()}
    for key, res in want.items():
        if res.ok:
            for name in ("scores", "flow", "curvature", "information"):
                # The float32 KL's absolute floor (tests/ops/utils.py KL_TOL: 1e-6 per unit of logit)
                # covers information terms near 0; everything else is judged against its largest entry.
                scale = float(getattr(res, name).abs().max())
                torch.testing.assert_close(getattr(got[key], name).double(), getattr(res, name).double(),
                                           rtol=1e-5, atol=max(1e-5 * scale, 1e-6), msg=f"{key} {name}")
        else:
            assert (got[key].error_type, got[key].message) == (res.error_type, res.message)
    assert sorted(got) == sorted(want)
    code, err = run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", tmp_path / "x",
                        "--batch-requests", "always")
    assert code == 2 and "--batch-requests" in err and len(err.splitlines()) == 1


def test_only_the_heta_fast_program_sets_the_allocator(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    """`heta-fast run` (main() with no argv) keeps freed memory process-wide; a program calling
    main([...]) in its own process keeps its allocator (heta_fast/allocator.py)."""
    from heta_fast import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    args = ["run", "-q", "--model", str(tiny_model_dir), "--input", str(data), "--output", str(tmp_path / "a")]
    assert main(args) == 0 and calls == []
    monkeypatch.setattr(sys, "argv", ["heta-fast", *args[:-1], str(tmp_path / "b")])
    assert main() == 0 and calls == [1]


def no_load(*args, **kwargs):
    raise AssertionError("the model was loaded (or Ray started) before the input and the output were checked")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails loudly: an error that comes out as one line came before any load."""
    from heta_fast import Attributor

    monkeypatch.setattr(Attributor, "from_pretrained", no_load)


def one_line_error(capsys, *args) -> str:
    code, err = run_cli(capsys, *args)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("heta-fast: error: "), (code, err)
    return err


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_an_unreadable_input_is_one_line_before_the_model_loads(no_model, tmp_path, capsys, name):
    path, message = write_unreadable(tmp_path, name)
    err = one_line_error(capsys, "--input", path, "--output", tmp_path / "out")
    assert re.search(message, err) and path in err


def test_ids_fields_and_the_output_directory_are_checked_before_the_model_loads(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    records = make_records(2)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    assert run_cli(capsys, "--model", tiny_model_dir, "--input", data, "--output", tmp_path / "done") == (0, "")
    (tmp_path / "file").write_text("")
    cases = [
        (write_jsonl(tmp_path / "dup.jsonl", records + records[:1]), tmp_path / "out", [], "duplicate id 'r0'"),
        (data, tmp_path / "out", ["--id-field", "key"], "--id-field"),
        (write_jsonl(tmp_path / "dict.jsonl", [dict(records[0], id={"k": 1})]), tmp_path / "out", [],
         "the id of record 0 is dict {'k': 1}"),
        (str(tmp_path / "lone.jsonl"), tmp_path / "out", [], "the id of record 0 holds a lone surrogate U+D800"),
        (data, tmp_path / "out", ["--target-field", "answer"], "no 'answer' field"),
        (data, tmp_path / "file", [], "is not a directory"),
        (data, tmp_path / "file" / "out", [], "cannot create the output directory"),
        (data, tmp_path / "done", ["--seed", "3"], "another configuration"),
    ]
    (tmp_path / "lone.jsonl").write_text('{"id": "\\ud800", "prompt": "w1", "target": "w2"}\n')
    from heta_fast import Attributor

    monkeypatch.setattr(Attributor, "from_pretrained", no_load)
    for path, out, extra, message in cases:
        assert message in one_line_error(capsys, "--model", tiny_model_dir, "--input", path, "--output", out, *extra)
    assert not (tmp_path / "out").exists()  # the ids and fields come before the output directory


@pytest.mark.parametrize("extra,message", [
    (["--concurrency", "4"], "--concurrency applies to --ray runs only"),
    (["--batch-size", "8"], "--batch-size applies to --ray runs only"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker applies to --ray runs only"),
    (["--threads-per-worker", "2", "--memory-per-worker", "4G"],
     "--threads-per-worker, --memory-per-worker apply to --ray runs only"),
    (["--ray-address", "auto"], "--ray-address applies to --ray runs only"),
    (["--split", "train"], "--split chooses a split of --dataset"),
    (["--ray", "--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number >= 0, got nan"),
    (["--ray", "--gpus-per-worker", "inf"], "--gpus-per-worker must be a finite number >= 0, got inf"),
    (["--ray", "--shard", "0/2"], "--shard and --ray do not combine"),
])
def test_an_option_of_another_mode_is_refused_not_ignored(no_model, data, tmp_path, capsys, monkeypatch, extra,
                                                          message):
    if "--ray" in extra:
        ray = pytest.importorskip("ray", reason="Ray is the optional extra heta-fast[ray] (in .[dev])")
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", no_load)
    assert message in one_line_error(capsys, "--input", data, "--output", tmp_path / "out", *extra)
    assert not (tmp_path / "out").exists()


def test_a_file_found_unreadable_mid_run_is_one_line(tiny_model_dir, tmp_path, capsys):
    path = corrupt_prompts(tmp_path / "r.parquet", make_records(12))
    err = one_line_error(capsys, "--model", tiny_model_dir, "--input", path, "--output", tmp_path / "out")
    assert f"{path}: not a readable Parquet file" in err
