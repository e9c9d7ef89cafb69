"""Issue 15 regressions found by trying the real CLI: results files given to ``heta-fast eval``
are refused in one line, with advice that fits the option, before the model loads."""
import json

import pytest

from heta_fast.cli import main


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is checked here is checked before any work."""
    from heta_fast.engine import Attributor

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(Attributor, "from_pretrained", classmethod(refuse))


def _eval(tiny_model_dir, tmp_path, *extra):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "prompt": "w1 w2", "target": "w3"}\n')
    return main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--methods", "rollout",
                 "--metrics", "dsa", "-q", *extra])


def _results_file(path, **changes):
    payload = {"format": "heta-fast-eval", "version": 1, "header": {}, "records": [], **changes}
    path.write_text(json.dumps(payload))
    return path


def test_the_results_file_format_is_the_one_written(tmp_path):
    from heta_fast.evaluate.results_file import ResultsFile, read_results_file

    ResultsFile(tmp_path / "w.json", {"model": "m"}).save()
    written = json.loads((tmp_path / "w.json").read_text())
    assert {k: written[k] for k in ("format", "version")} == {"format": "heta-fast-eval", "version": 1}
    read_results_file(_results_file(tmp_path / "ok.json"))  # the helper's file is a valid one


@pytest.mark.parametrize("content,match", [
    ("#!/bin/sh\n", "is not a results file"),
    (None, "version 99"),
])
def test_a_bad_file_to_merge_is_refused_as_such_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                       no_model, content, match):
    bad = tmp_path / "shard.json"
    if content is None:
        _results_file(bad, version=99)
    else:
        bad.write_text(content)
    code = _eval(tiny_model_dir, tmp_path, "--out", str(tmp_path / "r.json"), "--merge", str(bad))
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"heta-fast: error: --merge {bad}") and match in err
    assert "--out" not in err  # the advice for an --out file ("choose another --out") does not fit


@pytest.mark.parametrize("changes,match", [
    ({"version": 99}, "version 99"),
    ({"records": None}, "'records' must be a list"),
    ({"format": "other"}, "not a heta-fast eval results file"),
])
def test_an_unusable_out_file_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys, no_model,
                                                                changes, match):
    out = _results_file(tmp_path / "r.json", **changes)
    before = out.read_bytes()
    code = _eval(tiny_model_dir, tmp_path, "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    assert out.read_bytes() == before
