"""The row schema (docs/pipeline.md): a row holds a token-level result (a word-level one is refused
when written), a prompt or target given as token ids reads back as ids and a text that looks like
ids as text (``json_encoded``), and directories of every readable older version read and resume."""
import json

import numpy as np
import pytest

from heta_fast.errors import InputError
from heta_fast.io import read_results, write_results
from heta_fast.pipeline.run import run_to_directory
from heta_fast.pipeline.schema import ADDED_IN, READABLE_VERSIONS, SCHEMA_VERSION, result_to_row, row_to_result
from heta_fast.result import FailedAttribution
from tests.pipeline.conftest import make_records
from tests.tiny_models import text


def run(attributor, records, out, **kw):
    return run_to_directory(attributor, records, out, progress="quiet", rows_per_part=4, **kw)


# ------------------------------------------------------------------------------------------ word-level results
def test_a_word_level_result_is_refused_before_anything_is_written(attributor, tmp_path):
    records = [{"id": "a", "prompt": text(1, 2, 3), "target": text(4)}]
    words = [(key, res.aggregate()) for key, res in attributor.attribute_dataset(records)]
    with pytest.raises(InputError, match="'a': a results row stores a token-level result, not one in words.*"
                                         r"aggregate after reading"):
        write_results(words, tmp_path / "out", attributor=attributor)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="token-level"):
        result_to_row("a", words[0][1], "hash")  # the rule of every writer (a run's rows, Ray's)


def test_a_word_level_result_later_in_a_stream_is_refused_and_the_rows_before_it_read(attributor, tmp_path):
    records = [{"id": "a", "prompt": text(1, 2, 3), "target": text(4)},
               {"id": "b", "prompt": text(5), "target": text(6)}]
    pairs = [(key, res.aggregate() if key == "b" else res) for key, res in attributor.attribute_dataset(records)]
    with pytest.raises(InputError, match="'b': a results row stores a token-level result"):
        write_results(iter(pairs), tmp_path / "out", attributor=attributor)
    got = read_results(tmp_path / "out", form="attributions")
    assert list(got) == ["a"] and got["a"].unit == "tokens"


# ------------------------------------------------------------------------------------------ token ids, text
def test_a_token_id_prompt_reads_back_as_in_process_and_text_that_looks_like_ids_as_text(attributor, tmp_path):
    records = [{"id": "ids", "prompt": [4, 5, 6], "target": [7, 8]},
               {"id": "ids-bad", "prompt": [4, 5, 6], "target": []},
               {"id": "text-bad", "prompt": "[4, 5, 6]", "target": ""},
               {"id": "number-bad", "prompt": 5, "target": "[7]"},
               {"id": "text", "prompt": text(4, 5, 6), "target": text(7)}]
    in_process = dict(attributor.attribute_dataset(records))
    assert in_process["ids"].prompt is None and in_process["ids-bad"].prompt == [4, 5, 6]
    for fmt in ("parquet", "jsonl"):
        run(attributor, records, tmp_path / fmt, fmt=fmt)
        got = read_results(tmp_path / fmt, form="attributions")
        for key, res in in_process.items():
            assert got[key].prompt == res.prompt and type(got[key].prompt) is type(res.prompt), (fmt, key)
            if not res.ok:
                assert got[key].target == res.target and type(got[key].target) is type(res.target), (fmt, key)
        table = read_results(tmp_path / fmt, form="records").set_index("id")
        # Stored alike, told apart by json_encoded.
        assert table.loc["ids-bad", "prompt"] == table.loc["text-bad", "prompt"] == "[4, 5, 6]"
        assert list(table.loc["ids-bad", "json_encoded"]) == ["prompt", "target"]
        assert table.loc["text-bad", "json_encoded"] is None and table.loc["text", "json_encoded"] is None


def test_a_failure_given_array_ids_stores_and_reads_them_as_a_list(attributor):
    failure = FailedAttribution(0, np.array([4, 5], dtype=np.int64), [np.int64(7)], "InputError", "bad")
    row = result_to_row("x", failure, "hash")
    assert (row["prompt"], row["target"], row["json_encoded"]) == ("[4, 5]", "[7]", ["prompt", "target"])
    back = row_to_result(row)
    assert (back.prompt, back.target) == ([4, 5], [7])


# ------------------------------------------------------------------------------------------ older versions
def _as_version(out, version: int, drop=()):
    """Rewrite a directory as heta-fast wrote it at schema ``version`` (without the columns added
    since, nor ``drop``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    drop = [*drop, *(name for name, added in ADDED_IN.items() if added > version)]
    for part in (out / "parts").iterdir():
        if part.suffix == ".jsonl":
            rows = [json.loads(line) for line in part.read_text().splitlines()]
            part.write_text("".join(json.dumps({**{k: v for k, v in r.items() if k not in drop},
                                                "schema_version": version}) + "\n" for r in rows))
            continue
        table = pq.read_table(part).drop_columns(drop)
        numbers = pa.array([version] * table.num_rows, pa.int32())
        table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version", numbers)
        pq.write_table(table.replace_schema_metadata({"heta_fast_schema_version": str(version)}), part)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "schema_version": version}))


OLDER = [(v, drop) for v in READABLE_VERSIONS if v < SCHEMA_VERSION for drop in ((), ("architecture", "sinks"))
         if v == 2 or not drop]


@pytest.mark.parametrize("version,drop", OLDER, ids=[f"v{v}{'-early' if d else ''}" for v, d in OLDER])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_directory_of_an_older_schema_version_reads_and_resumes(attributor, tmp_path, fmt, version, drop):
    """Each readable older version (2 also as written before ``architecture`` and ``sinks`` were
    added to it without a new number) reads, what a part lacks as nulls, and resumes."""
    records = make_records(8)
    out = tmp_path / "out"
    run(attributor, records[:5], out, fmt=fmt)
    _as_version(out, version, drop)
    assert len(read_results(out, form="records")) == 5
    assert run(attributor, records, out, fmt=fmt).skipped == 5
    table = read_results(out, form="records")
    assert len(table) == 8 and sorted(set(table.schema_version)) == [version, SCHEMA_VERSION]
    assert table.json_encoded.isna().all()
    assert len(read_results(out, form="attributions")) == 8


def test_an_older_row_cannot_tell_ids_from_text_and_reads_its_prompt_as_the_text_stored(attributor, tmp_path):
    out = tmp_path / "out"
    run(attributor, [{"id": "ids-bad", "prompt": [4, 5, 6], "target": []}], out)
    _as_version(out, 3)
    got = read_results(out, form="attributions")["ids-bad"]
    assert (got.prompt, got.target) == ("[4, 5, 6]", "[]")
