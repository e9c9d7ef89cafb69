"""A damaged results directory: read_results and a resuming run refuse it with a ResultFormatError
naming the file and the problem (one line, exit 2, at the command), and never read it silently."""
import json

import pytest

from heta_fast.cli import main
from heta_fast.errors import ConfigError, InputError, ResultFormatError
from heta_fast.io import read_results
from tests.pipeline.conftest import make_records, write_jsonl


def _run(tiny_model_dir, tmp_path, out, fmt: str = "parquet") -> int:
    data = write_jsonl(tmp_path / "in.jsonl", make_records(4))
    code = main(["run", "-q", "--model", str(tiny_model_dir), "--input", data, "--output", str(out), "--format", fmt,
                 "--rows-per-part", "2", "--num-probes", "1"])
    return code


@pytest.fixture
def written(tiny_model_dir, tmp_path, request, capsys):
    """An output directory of 4 records in parts of 2 rows (Parquet, or the format the test asks for)."""
    out = tmp_path / "out"
    assert _run(tiny_model_dir, tmp_path, out, getattr(request, "param", "parquet")) == 0, capsys.readouterr().err
    return out


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _first_part(out):
    return out / "parts" / _manifest(out)["parts"][0]["file"]


def _refused(out, *match):
    for form in ("long", "records", "attributions"):
        with pytest.raises(ResultFormatError) as info:
            read_results(out, form=form)
        for text in match:
            assert text in str(info.value), str(info.value)


def _cli_refuses(out, tiny_model_dir, tmp_path, capsys, match, fmt="parquet"):
    """Resuming the run that wrote ``out`` stops in one line, exit 2."""
    capsys.readouterr()
    code = _run(tiny_model_dir, tmp_path, out, fmt)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("heta-fast: error:"), err
    assert match in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("change,problem", [
    (lambda m: [1, 2], "a JSON list, not an object"),
    (lambda m: {"parts": ["x"]}, "schema version None"),
    (lambda m: {**m, "parts": ["x"]}, "part 0 is not an object"),
    (lambda m: {**m, "parts": {"file": "x"}}, "'parts' is not a list"),
    (lambda m: {**m, "parts": [{"file": 3, "rows": 2}]}, "not a plain part file name"),
    (lambda m: {**m, "parts": [{"file": m["parts"][0]["file"]}]}, "row count"),
    (lambda m: {**m, "parts": [{"file": m["parts"][0]["file"], "rows": "2"}]}, "row count"),
    (lambda m: {**m, "parts": [{"file": m["parts"][0]["file"], "rows": -1}]}, "row count"),
    (lambda m: {**m, "config_hash": None}, "config_hash"),
    (lambda m: {**m, "settings": [1]}, "settings"),
    (lambda m: {**m, "schema_version": 9}, "schema version 9"),
])
def test_a_manifest_of_the_wrong_shape_is_a_format_error_naming_it(written, change, problem, tiny_model_dir,
                                                                    tmp_path, capsys):
    path = written / "manifest.json"
    path.write_text(json.dumps(change(_manifest(written))))
    _refused(written, str(path), problem)
    _cli_refuses(written, tiny_model_dir, tmp_path, capsys, problem)


@pytest.mark.parametrize("name", ["../../good.jsonl", "sub/part-main-000000.parquet", "..", "/etc/passwd",
                                  "part-main-000000.csv", ""])
def test_a_part_name_that_is_not_a_plain_file_name_in_the_parts_folder_is_refused(written, name):
    (written.parent / "good.jsonl").write_bytes(_first_part(written).read_bytes())
    manifest = _manifest(written)
    manifest["parts"][0]["file"] = name
    (written / "manifest.json").write_text(json.dumps(manifest))
    _refused(written, "not a plain part file name", repr(name))


def test_a_parquet_file_without_the_results_schema_is_refused(written, tiny_model_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = _first_part(written)
    pq.write_table(pa.table({"x": [1, 2]}), part)
    _refused(written, str(part), "not a heta-fast results part")
    _cli_refuses(written, tiny_model_dir, tmp_path, capsys, "not a heta-fast results part")
    part.write_bytes(b"not parquet at all")
    _refused(written, str(part))


def test_a_parquet_part_of_the_results_columns_but_other_types_is_refused(written):
    import pyarrow.parquet as pq

    part = _first_part(written)
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("n_context"), "n_context",
                             table.column("n_context").cast("float64"))
    pq.write_table(table, part)
    _refused(written, str(part), "not a heta-fast results part")


@pytest.mark.parametrize("written", ["jsonl", "parquet"], indirect=True)
def test_a_part_that_holds_other_rows_than_its_manifest_counts_is_refused(written, tiny_model_dir, tmp_path, capsys):
    part = _first_part(written)
    if part.suffix == ".jsonl":  # cut at a line boundary: every line left is a whole row
        part.write_text(part.read_text().splitlines(keepends=True)[0])
    else:  # its manifest counts another number of rows
        manifest = _manifest(written)
        manifest["parts"][0]["rows"] = 3
        (written / "manifest.json").write_text(json.dumps(manifest))
    _refused(written, str(part), "holds 1 row" if part.suffix == ".jsonl" else "holds 2 rows", "lists")
    _cli_refuses(written, tiny_model_dir, tmp_path, capsys, "lists", part.suffix.lstrip("."))


@pytest.mark.parametrize("written", ["jsonl"], indirect=True)
@pytest.mark.parametrize("line,problem", [("[1, 2]", "line 1 is not a results row"),
                                          ('{"id": "a"}', "line 1 is not a results row"),
                                          ('{"id": "a", "ok": tr', "line 1")])
def test_a_jsonl_line_that_is_not_a_results_row_is_refused(written, line, problem):
    part = _first_part(written)
    rows = part.read_text().splitlines(keepends=True)
    part.write_text(line + "\n" + rows[1])
    _refused(written, str(part), problem)


def test_a_missing_part_says_it_is_missing(written, tiny_model_dir, tmp_path, capsys):
    part = _first_part(written)
    part.unlink()
    _refused(written, str(part), "is missing")
    _cli_refuses(written, tiny_model_dir, tmp_path, capsys, "is missing")


def test_a_bad_form_or_directory_argument_is_a_typed_error(written):
    with pytest.raises(ConfigError, match="unknown form 'bogus'"):
        read_results(written, form="bogus")
    for directory in (5, None, ["out"]):
        with pytest.raises(InputError, match="a directory path"):
            read_results(directory)
