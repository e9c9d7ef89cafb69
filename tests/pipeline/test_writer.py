"""The writer: a record whose text is not UTF-8 (a lone surrogate) is its own failure row, its text
stored escaped and read back exactly; no row's content makes its part unwritable (older schema
versions: tests/pipeline/test_schema.py)."""
import math

import pytest

from heta_fast.cli import main
from heta_fast.io import read_results
from heta_fast.pipeline.readers import Fields
from heta_fast.pipeline.run import run_to_directory
from heta_fast.pipeline.schema import escape_text, result_to_row, unescape_text
from heta_fast.pipeline.writer import ResultWriter
from heta_fast.result import FailedAttribution
from tests.pipeline.conftest import make_records, write_jsonl
from tests.tiny_models import text

LONE = "w1 \ud800 w2"  # what json.loads makes of "w1 \ud800 w2": not UTF-8, not storable as it is


def run(attributor, records, out, **kw):
    return run_to_directory(attributor, records, out, progress="quiet", rows_per_part=4, **kw)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_text_that_is_not_utf8_is_its_records_failure_row_and_reads_back_exactly(attributor, tmp_path, fmt):
    records = [{"id": "a", "prompt": text(1, 2), "target": text(3)},
               {"id": "p", "prompt": LONE, "target": text(4)},
               {"id": "t", "prompt": text(1, 2), "target": "w3 \udcff"},
               {"id": "lit", "prompt": "w1 \\ud800 \ud800", "target": text(4)},  # a backslash, then a surrogate
               {"id": "b", "prompt": text(5, 6), "target": text(7)}]
    out = tmp_path / "out"
    counter = run(attributor, records, out, fmt=fmt)
    assert (counter.done, counter.failed) == (5, 3)
    got = read_results(out, form="attributions")
    assert got["a"].ok and got["b"].ok
    for key, problem in (("p", "lone surrogate U+D800"), ("t", "not valid UTF-8"), ("lit", "lone surrogate U+D800")):
        assert got[key].error_type == "InputError" and problem in got[key].message
    assert (got["p"].prompt, got["t"].target, got["lit"].prompt) == (LONE, "w3 \udcff", records[3]["prompt"])
    table = read_results(out, form="records").set_index("id")
    assert table.loc["p", "prompt"] == "w1 \\ud800 w2" and list(table.loc["p", "escaped"]) == ["prompt"]
    assert table.loc["lit", "prompt"] == "w1 \\\\ud800 \\ud800" and list(table.loc["t", "escaped"]) == ["target"]
    assert table.loc["a", "escaped"] is None and table.loc["a", "prompt"] == text(1, 2)
    again = run(attributor, records, out, fmt=fmt)
    assert (again.done, again.skipped) == (0, 5)


def test_chat_content_that_is_not_utf8_is_stored_escaped_and_resumes(attributor, tmp_path):
    chat = [{"role": "user", "content": LONE}]
    records = [{"id": "c", "chat": chat, "target": text(4)}, {"id": "d", "chat": [], "target": text(4)}]
    out = tmp_path / "out"
    assert run(attributor, records, out, fields=Fields(messages="chat")).done == 2
    got = read_results(out, form="attributions")
    assert got["c"].messages == chat and got["c"].prompt is None
    assert list(read_results(out, form="records").set_index("id").loc["c", "escaped"]) == ["messages"]
    assert run(attributor, records, out, fields=Fields(messages="chat")).skipped == 2


def test_an_id_stored_escaped_counts_as_written(tmp_path):
    """write_results checks no ids: an id that is not UTF-8 is stored escaped, and resuming knows it."""
    rows = [result_to_row(key, FailedAttribution(0, text(1), text(2), "InputError", "bad"), "h", model="m")
            for key in ("a", "k\udc80")]
    with ResultWriter(tmp_path / "out", {"model": "m"}) as writer:
        for row in rows:
            writer.write(row)
    with ResultWriter(tmp_path / "out", {"model": "m"}) as writer:
        assert writer.completed_ids() == {"a", "k\udc80"}
    assert sorted(read_results(tmp_path / "out", form="attributions")) == ["a", "k\udc80"]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_command_writes_the_other_records_beside_one_that_is_not_utf8(tiny_model_dir, tmp_path, capsys, fmt):
    records = make_records(4)
    records[1]["prompt"] = LONE
    data = write_jsonl(tmp_path / "in.jsonl", records)  # json.dumps writes the surrogate as \ud800
    assert "\\ud800" in (tmp_path / "in.jsonl").read_text()
    args = ["run", "-q", "--model", str(tiny_model_dir), "--input", data, "--output", str(tmp_path / "out"),
            "--format", fmt, "--num-probes", "1"]
    assert main(args) == 0, capsys.readouterr().err
    table = read_results(tmp_path / "out", form="records").set_index("id")
    assert sorted(table.index) == ["r0", "r1", "r2", "r3"]
    assert not table.loc["r1", "ok"] and table.loc["r1", "prompt"] == "w1 \\ud800 w2"
    assert table.loc["r0", "ok"] and table.loc["r2", "ok"]
    assert main([a for a in args if a != "-q"]) == 0 and "4 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,bad", [("parquet", {"n_context": "many"}), ("jsonl", {"n_context": "many"}),
                                     ("jsonl", {"time_forward": math.nan})])
def test_a_row_the_part_cannot_hold_is_stored_as_its_failure_row(tmp_path, fmt, bad):
    rows = [result_to_row(key, FailedAttribution(0, text(1), text(2), "InputError", "bad"), "h", model="m")
            for key in ("a", "b", "c")]
    rows[1].update(bad)
    with ResultWriter(tmp_path / "out", {"model": "m"}, fmt=fmt, rows_per_part=8) as writer:
        for row in rows:
            writer.write(row)
    table = read_results(tmp_path / "out", form="records").set_index("id")
    assert sorted(table.index) == ["a", "b", "c"]
    assert table.loc["b", "error_type"] == "OutputError" and "cannot be stored" in table.loc["b", "message"]
    assert table.loc["a", "message"] == table.loc["c", "message"] == "bad"


@pytest.mark.parametrize("value", ["", "plain", "a\\b", "\\ud800", "\ud800", "\\\ud800\\\\u", "\udcff\udc80é"])
def test_escaping_is_undone_exactly_and_never_confuses_a_backslash_with_a_surrogate(value):
    stored = escape_text(value)
    stored.encode("utf-8")
    assert unescape_text(stored) == value
    assert escape_text("\\ud800") != escape_text("\ud800")


def test_json_nested_too_deeply_in_a_results_directory_is_a_result_format_error(attributor, tmp_path):
    from heta_fast.errors import ResultFormatError

    out = tmp_path / "out"
    run(attributor, make_records(2), out, fmt="jsonl")
    part = next((out / "parts").iterdir())
    good = part.read_text()
    part.write_text("[" * 100_000 + "\n")
    with pytest.raises(ResultFormatError, match="line 1: JSON nested too deeply"):
        read_results(out)
    part.write_text(good)
    (out / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(ResultFormatError, match="manifest.json: JSON nested too deeply"):
        read_results(out)
