"""A row of a results part whose contents contradict each other (the row count kept, so the manifest
check passes): every form of read_results refuses it with a ResultFormatError naming the part file
and the row's id, never a raw traceback or an object built from it (row_checks.check_rows)."""
import json
import shutil

import pytest

from heta_fast.errors import ResultFormatError
from heta_fast.io import read_results
from heta_fast.pipeline.run import run_to_directory
from tests.tiny_models import text

RECORDS = [{"id": "a", "prompt": text(1, 2, 3), "target": text(4, 5)},
           {"id": "ids", "prompt": [4, 5, 6], "target": [7]},
           {"id": "bad", "prompt": "", "target": text(1)}]


def _set(**values):
    return lambda row: row.update(values)


def _pop_score(row):
    row["scores"][0].pop()


def _null_score(row):
    row["scores"][1][0] = None


def _null_token(row):
    row["context_tokens"][0] = None


# (edit of row "a" (of "ids", "bad": say so), what the error says after the row's id)
DAMAGE = {
    "score-removed": (_pop_score, "scores is not n_target (2) lists of n_context (3) numbers"),
    "score-null": (_null_score, "scores is not n_target (2) lists"),
    "scores-null": (_set(scores=None), "scores is not n_target (2) lists"),
    "flow-short": (_set(flow=[[1.0, 2.0, 3.0]]), "flow is not n_target (2) lists of n_context (3) numbers or null"),
    "n-context-wrong": (_set(n_context=2), "context_tokens is not a list of n_context (2) values"),
    "n-target-null": (_set(n_target=None), "n_context (3) or n_target (None) is null or negative"),
    "tokens-short": (_set(context_tokens=["x"]), "context_tokens is not a list of n_context (3) values"),
    "token-null": (_null_token, "context_tokens is not a list of n_context (3) values"),
    "ids-short": (_set(target_ids=[1]), "target_ids is not a list of n_target (2) values or null"),
    "special-short": (_set(special=[True]), "special is not a list of n_context (3) values or null"),
    "config-not-json": (_set(config="{bad"), "column config: not valid JSON"),
    "config-not-object": (_set(config="[1]"), "config is not a JSON object"),
    "messages-not-chat": (_set(messages="[1,2]"), "messages is not a JSON list of objects"),
    "ok-null": (_set(ok=None), "its 'ok' is null"),
    "escaped-not-text": (_set(escaped=["ok"]), "escaped names ['ok'], not text columns"),
    "encoded-not-given": (_set(json_encoded=["message"]), "json_encoded names ['message']"),
    "encoded-text": (_set(json_encoded=["prompt"]), "column prompt: not valid JSON"),
    "ids-encoded-dropped": ((_set(prompt="[4, 5"), "ids"), "column prompt: not valid JSON"),
    "failure-target-not-json": ((_set(json_encoded=["target"]), "bad"), "column target: not valid JSON"),
}


@pytest.fixture(scope="module")
def written(attributor, tmp_path_factory):
    """{fmt: a directory of RECORDS in one part}."""
    base = tmp_path_factory.mktemp("written")
    for fmt in ("parquet", "jsonl"):
        run_to_directory(attributor, RECORDS, base / fmt, fmt=fmt, progress="quiet")
    return {fmt: base / fmt for fmt in ("parquet", "jsonl")}


def _damage(out, key: str, edit) -> str:
    """Edit the row ``key`` of ``out``'s one part in place; returns the part's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (part,) = (out / "parts").iterdir()
    if part.suffix == ".jsonl":
        rows = [json.loads(line) for line in part.read_text().splitlines()]
    else:
        table = pq.read_table(part)
        rows = table.to_pylist()
    edit(next(row for row in rows if row["id"] == key))
    if part.suffix == ".jsonl":
        part.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    return str(part)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_row_is_a_result_format_error_naming_the_file_and_the_row(written, tmp_path, fmt, name):
    out = tmp_path / "out"
    shutil.copytree(written[fmt], out)
    edit, problem = DAMAGE[name]
    edit, key = edit if isinstance(edit, tuple) else (edit, "a")
    part = _damage(out, key, edit)
    for form in ("long", "records", "attributions"):
        with pytest.raises(ResultFormatError) as info:
            read_results(out, form=form)
        message = str(info.value)
        assert message.startswith(f"{part}: row ") and f"(id {key!r})" in message and problem in message, message


def test_a_row_without_id_is_named_by_its_number(written, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(written["jsonl"], out)
    part = _damage(out, "ids", _set(id=None))
    with pytest.raises(ResultFormatError) as info:
        read_results(out, form="attributions")
    assert str(info.value) == f"{part}: row 2 (id None) is damaged: it has no id"


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_undamaged_rows_read_as_written(written, attributor, fmt):
    got = read_results(written[fmt], form="attributions")
    assert sorted(got) == ["a", "bad", "ids"] and got["a"].scores.shape == (2, 3)
    assert len(read_results(written[fmt])) == 2 * 3 + 1 * 3
