"""run_to_directory: one row per record, failures as rows, resume, settings, ids, lock, orphans, shards."""
import pytest

from heta_fast import ConfigError, HETAConfig, InputError
from heta_fast.io import read_results, write_results
from heta_fast.pipeline.manifest import DirectoryLock, OutputInUseError
from heta_fast.pipeline.readers import Fields
from heta_fast.pipeline.run import run_to_directory
from heta_fast.pipeline.schema import SCHEMA_VERSION
from tests.pipeline.conftest import BAD, assert_same_results
from tests.tiny_models import text


def run(attributor, records, out, **kw):
    kw.setdefault("progress", "quiet")
    kw.setdefault("rows_per_part", 4)
    return run_to_directory(attributor, records, out, **kw)


def test_one_row_per_record_equal_to_single_calls(attributor, records, tmp_path):
    counter = run(attributor, records, tmp_path / "out")
    assert (counter.done, counter.failed, counter.skipped) == (12, 3, 0)
    got = read_results(tmp_path / "out", form="attributions")
    assert sorted(got) == sorted(r["id"] for r in records)
    for r in records:
        res = got[r["id"]]
        if r["id"] in BAD:
            assert not res.ok and res.error_type == BAD[r["id"]] and "\n" not in res.message
            continue
        alone = attributor.attribute(r["prompt"], r["target"])
        assert res.prompt == r["prompt"] and res.model == "tiny"
        assert_same_results({r["id"]: res}, {r["id"]: alone})
    table = read_results(tmp_path / "out", form="records")
    assert table["config_hash"].nunique() == 1 and (table["schema_version"] == SCHEMA_VERSION).all()
    assert set(table.loc[table.ok, "target"]) <= {r["target"] for r in records}


def test_long_format_has_a_row_per_target_and_context_token(attributor, records, tmp_path):
    run(attributor, records, tmp_path / "out")
    long = read_results(tmp_path / "out")
    attributions = read_results(tmp_path / "out", form="attributions")
    ok = {k: a for k, a in attributions.items() if a.ok}
    assert len(long) == sum(a.scores.numel() for a in ok.values())
    one = long[long.id == "r0"].sort_values(["target_index", "context_index"])
    assert one["scores"].tolist() == ok["r0"].scores.reshape(-1).tolist()
    assert one["context_token"].tolist() == ok["r0"].context_tokens


def test_rerun_skips_written_ids_and_computes_the_rest(attributor, records, tmp_path):
    out = tmp_path / "out"
    run(attributor, records[:5], out)
    first = read_results(out, form="attributions")
    counter = run(attributor, records, out)
    assert (counter.done, counter.skipped) == (7, 5)
    again = run(attributor, records, out)
    assert (again.done, again.skipped) == (0, 12)
    full = read_results(out, form="attributions")
    assert_same_results({k: full[k] for k in first}, first)
    assert len(read_results(out, form="records")) == 12


def test_other_settings_refuse_the_directory(attributor, records, tmp_path):
    run(attributor, records[:2], tmp_path / "out")
    with pytest.raises(ConfigError, match="another configuration"):
        run(attributor, records, tmp_path / "out", config=HETAConfig(beta=2.0))
    run(attributor, records[:2], tmp_path / "new", config=HETAConfig(beta=2.0))


def test_a_directory_from_before_a_config_field_resumes_at_its_default(attributor, records, tmp_path):
    """A manifest written before ``information_span`` existed does not name it: a rerun that leaves
    it at its default resumes the directory (its hash kept), one that sets it is refused."""
    import json

    out = tmp_path / "out"
    run(attributor, records[:3], out)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["settings"]["config"]["information_span"]
    manifest["config_hash"] = "0123456789abcdef"  # the hash an older version computed without the field
    path.write_text(json.dumps(manifest))
    assert run(attributor, records, out).skipped == 3
    table = read_results(out, form="records")
    assert len(table) == 12
    assert json.loads(path.read_text())["config_hash"] == "0123456789abcdef"
    assert (table[table.id.isin([r["id"] for r in records[3:]])]["config_hash"] == "0123456789abcdef").all()
    with pytest.raises(ConfigError, match="another configuration"):
        run(attributor, records, out, config=HETAConfig(information_span=4))


def test_retry_failed_recomputes_failures_only(attributor, records, tmp_path):
    out = tmp_path / "out"
    run(attributor, records, out)
    fixed = [dict(r, prompt=text(1, 2, 3), target=text(4)) if r["id"] in BAD else r for r in records]
    assert run(attributor, fixed, out).done == 0  # failures count as written
    counter = run(attributor, fixed, out, retry_failed=True)
    assert (counter.done, counter.failed, counter.skipped) == (3, 0, 9)
    table = read_results(out, form="records")
    assert len(table) == 12 and table.ok.all()


def test_duplicate_or_missing_ids_fail_before_any_work(attributor, records, tmp_path):
    with pytest.raises(ConfigError, match="duplicate id 'r1'"):
        run(attributor, records + [records[1]], tmp_path / "out")
    with pytest.raises(ConfigError, match="--id-field"):
        run(attributor, records, tmp_path / "out", fields=Fields(id="key"))
    assert not (tmp_path / "out").exists()


def test_a_second_writer_is_refused(attributor, records, tmp_path):
    (tmp_path / "out").mkdir()
    with DirectoryLock(tmp_path / "out", "main"):
        with pytest.raises(OutputInUseError, match="in use by another heta-fast run"):
            run(attributor, records, tmp_path / "out")
        with pytest.raises(OutputInUseError):  # a shard cannot join an unsharded writer either
            run(attributor, records, tmp_path / "out", shard="0/2")
    run(attributor, records[:1], tmp_path / "out")


def test_unlisted_parts_and_temporary_files_are_ignored_then_removed(attributor, records, tmp_path):
    out = tmp_path / "out"
    run(attributor, records[:4], out)
    parts = out / "parts"
    (parts / "part-main-000009.parquet").write_bytes(b"half a file")
    (parts / ".part-main-000010.parquet.123.tmp").write_bytes(b"")
    assert len(read_results(out, form="records")) == 4
    run(attributor, records[:6], out)
    assert not (parts / "part-main-000009.parquet").exists()
    assert not (parts / ".part-main-000010.parquet.123.tmp").exists()
    assert len(read_results(out, form="records")) == 6


def test_jsonl_parts_and_shards_read_the_same(attributor, records, tmp_path):
    run(attributor, records, tmp_path / "full")
    expected = read_results(tmp_path / "full", form="attributions")
    run(attributor, records, tmp_path / "text", fmt="jsonl")
    assert_same_results(read_results(tmp_path / "text", form="attributions"), expected)
    assert any(p.suffix == ".jsonl" for p in (tmp_path / "text" / "parts").iterdir())
    for shard in ("0/2", "1/2"):
        counter = run(attributor, records, tmp_path / "sharded", shard=shard)
        assert counter.done == 6
    assert_same_results(read_results(tmp_path / "sharded", form="attributions"), expected)


def test_memory_budget_failures_are_rows(attributor, tmp_path):
    # 4.3 MB holds the masked variants of a 2-token prompt, not of a 50-token one (tiny Llama).
    recs = [{"id": "long", "prompt": text(*range(50)), "target": text(3)},
            {"id": "short", "prompt": text(1, 2), "target": text(3)}]
    run(attributor, recs, tmp_path / "out", config=HETAConfig(memory_budget=4_300_000))
    got = read_results(tmp_path / "out", form="attributions")
    assert got["long"].error_type == "MemoryBudgetError" and got["short"].ok


def test_write_results_takes_attribute_dataset_pairs(attributor, records, tmp_path):
    pairs = list(attributor.attribute_dataset(records))
    assert [k for k, _ in pairs] == [r["id"] for r in records]
    assert write_results(pairs, tmp_path / "out", attributor=attributor) == 12
    got = read_results(tmp_path / "out", form="attributions")
    assert_same_results(got, dict(pairs))  # failures too: their error type and message
    assert any(not r.ok for _, r in pairs)


def test_a_missing_field_gives_the_same_rows_whatever_the_record_order(attributor, records, tmp_path):
    """A record without a target is its own failure row, first or not; a target field that no
    record has is a wrong flag, refused before any work."""
    lacking = {"id": "x", "prompt": text(1, 2)}
    first = run(attributor, [lacking] + records[:3], tmp_path / "first")
    later = run(attributor, records[:3] + [lacking], tmp_path / "later")
    assert (first.done, first.failed) == (later.done, later.failed) == (4, 1)
    rows = [read_results(tmp_path / name, form="records").set_index("id") for name in ("first", "later")]
    for row in rows:
        assert not row.loc["x", "ok"] and row.loc["x", "message"] == "the record has no 'target' field"
    assert sorted(rows[0].index) == sorted(rows[1].index)
    with pytest.raises(ConfigError, match="the input has no 'answer' field"):
        run(attributor, [lacking] + records[:3], tmp_path / "none", fields=Fields(target="answer"))
    assert not (tmp_path / "none").exists()


def test_run_to_directory_refuses_a_bad_config_or_generate_before_writing(attributor, records, tmp_path):
    with pytest.raises(ConfigError, match="config must be a HETAConfig"):
        run_to_directory(attributor, records, tmp_path / "a", config={"beta": 1.0}, progress="quiet")
    for generate in (0, -1, True, 1.5):
        with pytest.raises(InputError, match="generate must be an integer >= 1"):
            run_to_directory(attributor, records, tmp_path / "b", generate=generate, progress="quiet")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_output_directory_whose_parts_is_a_file_is_refused(attributor, records, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "parts").write_text("not a folder")
    with pytest.raises(ConfigError, match="holds a file named 'parts' where its part files go"):
        run_to_directory(attributor, records, tmp_path / "out", progress="quiet")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        run_to_directory(attributor, records, tmp_path / "file", progress="quiet")
