"""Readers: JSONL, Parquet, CSV, datasets on disk, DataFrames give the same records; attribute_dataset over each."""
import pandas as pd
import pytest

from heta_fast import ConfigError, InputError
from heta_fast.pipeline.readers import Fields, read_dataset, read_file, read_ids, read_input, select_shard
from tests.pipeline.conftest import (
    UNREADABLE,
    corrupt_prompts,
    make_records,
    write_jsonl,
    write_records,
    write_unreadable,
)


def test_every_format_reads_the_same_records(records, tmp_path):
    frame = pd.DataFrame(records)
    frame.to_parquet(tmp_path / "r.parquet")
    frame.to_csv(tmp_path / "r.csv", index=False)
    write_jsonl(tmp_path / "r.jsonl", records)
    import datasets

    datasets.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame), "test": datasets.Dataset.from_pandas(frame[:2])}
                         ).save_to_disk(str(tmp_path / "dd"))
    for name in ("r.parquet", "r.csv", "r.jsonl"):
        assert list(read_file(tmp_path / name)) == records, name
    assert list(read_dataset(str(tmp_path / "ds"))) == records
    assert list(read_dataset(str(tmp_path / "dd"), "train")) == records
    with pytest.raises(ConfigError, match="--split"):
        read_dataset(str(tmp_path / "dd"))


def test_bad_files_and_fields_are_one_line_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON \(Expecting value at column 1\)"):
        list(read_file(tmp_path / "bad.jsonl"))
    with pytest.raises(ConfigError, match=".jsonl, .parquet or .csv"):
        read_file(tmp_path / "bad.txt")
    with pytest.raises(InputError, match="does not exist"):
        read_file(tmp_path / "missing.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(InputError, match="folder.jsonl is a directory, not a file"):
        read_file(tmp_path / "folder.jsonl")
    assert Fields(messages="chat").context == "chat" and Fields().context == "prompt"
    assert select_shard(list(range(7)), "1/3") == [1, 4]
    with pytest.raises(ConfigError, match="I/N"):
        select_shard([1], "3/3")


def test_attribute_dataset_takes_dicts_frames_and_datasets(attributor, records):
    import datasets

    expected = [(k, r.ok) for k, r in attributor.attribute_dataset(records)]
    assert [k for k, _ in expected] == [r["id"] for r in records]
    assert [ok for _, ok in expected].count(False) == 3
    frame = pd.DataFrame(records)
    assert [(k, r.ok) for k, r in attributor.attribute_dataset(frame)] == expected
    assert [(k, r.ok) for k, r in attributor.attribute_dataset(datasets.Dataset.from_pandas(frame))] == expected
    missing = list(attributor.attribute_dataset([{"id": "x", "prompt": "w1 w2"}]))
    assert missing[0][1].message == "the record has no 'target' field"


def test_generate_attributes_the_greedy_continuation(attributor):
    recs = [{"id": "g", "prompt": "w1 w2 w3"}]
    (key, res), = attributor.attribute_dataset(recs, generate=3)
    alone = attributor.generate_and_attribute("w1 w2 w3", max_new_tokens=3)
    assert key == "g" and res.target_ids == alone.target_ids
    assert res.scores.tolist() == alone.scores.tolist()


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_an_unreadable_file_is_one_input_error_naming_it(tmp_path, name):
    """Not UTF-8, nested too deeply, a malformed CSV, not Parquet: an InputError naming the file and
    what is wrong, raised by the first reading (the ids), before any work, and by the second alike."""
    path, message = write_unreadable(tmp_path, name)
    source = read_file(path)
    for reading in (lambda: read_ids(source, Fields()), lambda: list(source)):
        with pytest.raises(InputError, match=message) as caught:
            reading()
        assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


def test_a_corrupt_page_found_later_is_an_input_error_too(tmp_path):
    """A Parquet file whose footer and id column read but whose prompt column is corrupt: the ids
    read, the records stop with an InputError naming the file (not pyarrow's OSError)."""
    path = corrupt_prompts(tmp_path / "r.parquet", make_records(12))
    assert read_ids(read_file(path), Fields()) == [f"r{i}" for i in range(12)]
    with pytest.raises(InputError, match=f"{path}: not a readable Parquet file"):
        list(read_file(path))


@pytest.mark.parametrize("key,message", [
    ({"k": 1}, "the id of record 1 is dict {'k': 1}; an id must be text, a number or a date"),
    ([1, 2], "the id of record 1 is list"),
    (True, "the id of record 1 is bool"),
    (b"r1", "the id of record 1 is bytes"),
    ("r\ud800", "the id of record 1 holds a lone surrogate U[+]D800"),
])
def test_an_id_that_is_not_text_or_a_number_is_refused(tmp_path, key, message):
    records = [{"id": "r0", "prompt": "w1", "target": "w2"}, {"id": key, "prompt": "w1", "target": "w2"}]
    with pytest.raises(InputError, match=message):
        read_ids(records, Fields())
    assert read_ids([{"id": 7}, {"id": 2.5}, {"id": "r\u00e9"}], Fields()) == ["7", "2.5", "r\u00e9"]


def test_decimal_and_date_ids_read_as_their_text(tmp_path):
    """A Parquet decimal or date id column (Python Decimal, date, datetime): scalars with one
    spelling each, stored as that text as before the id rule."""
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [decimal.Decimal("1.50"), decimal.Decimal("2")]
    pq.write_table(pa.table({"id": pa.array(ids, pa.decimal128(4, 2)), "prompt": ["w1"] * 2, "target": ["w2"] * 2}),
                   tmp_path / "d.parquet")
    assert read_ids(read_file(tmp_path / "d.parquet"), Fields()) == ["1.50", "2.00"]
    days = [datetime.date(2026, 12, 5), datetime.datetime(2026, 12, 5, 7, 30)]
    assert read_ids([{"id": day} for day in days], Fields()) == ["2026-12-05", "2026-12-05 07:30:00"]


def test_ids_read_from_files_are_checked_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [{"k": 1}], "prompt": ["w1"], "target": ["w2"]}), tmp_path / "struct.parquet")
    with pytest.raises(InputError, match="the id of record 0 is dict"):
        read_ids(read_file(tmp_path / "struct.parquet"), Fields())
    (tmp_path / "s.jsonl").write_text('{"id": "\\ud800", "prompt": "w1", "target": "w2"}\n')
    with pytest.raises(InputError, match="the id of record 0 holds a lone surrogate"):
        read_ids(read_file(tmp_path / "s.jsonl"), Fields())


@pytest.mark.parametrize("fmt", ["list", "jsonl", "parquet", "csv"])
def test_a_field_is_missing_only_when_no_record_has_it(tmp_path, fmt):
    """Whichever record lacks the target, the first or a later one, the input has the field; an
    input where no record has it is a wrong flag (ConfigError)."""
    lacking = {"id": "a", "prompt": "w1"}
    having = {"id": "b", "prompt": "w2", "target": "w3"}
    for records in ([lacking, having], [having, lacking]):
        assert read_input(_source(tmp_path, fmt, records), Fields(), None) == [r["id"] for r in records]
    with pytest.raises(ConfigError, match="the input has no 'target' field"):
        read_input(_source(tmp_path, fmt, [lacking, dict(lacking, id="c")]), Fields(), None)
    assert read_input(_source(tmp_path, fmt, [lacking]), Fields(), 3) == ["a"]  # generated targets
    with pytest.raises(ConfigError, match="no 'chat' field; name it with --messages-field"):
        read_input(_source(tmp_path, fmt, [lacking, having]), Fields(messages="chat"), 3)


def _source(tmp_path, fmt: str, records: list[dict]):
    """``records`` as a list, or written to a file of ``fmt``."""
    return records if fmt == "list" else read_file(write_records(tmp_path / f"r.{fmt}", records))


def test_a_short_csv_row_lacks_its_last_fields_and_an_empty_field_is_empty_text(attributor, tmp_path):
    """A CSV row shorter than the header lacks those fields: its record is a failure row saying
    so (as a JSONL record without the field), never a record whose target is read as empty text.
    A field written empty is empty text; a byte-order mark is not part of the first column's name;
    a field longer than the csv module's default limit (128 KiB) reads whole."""
    from heta_fast.pipeline.run import attribute_records

    long_prompt = " ".join(["w1"] * 70_000)  # 210,000 characters
    path = tmp_path / "r.csv"
    path.write_text(f'\ufeffid,prompt,target\na,w1 w2,w3\nb,w1 w2\nc,w1 w2,\n\nd,"{long_prompt}",w2\n',
                    encoding="utf-8")
    source = read_file(path)
    assert source.names() == ["id", "prompt", "target"]
    rows = list(source)
    assert rows[:3] == [{"id": "a", "prompt": "w1 w2", "target": "w3"}, {"id": "b", "prompt": "w1 w2"},
                        {"id": "c", "prompt": "w1 w2", "target": ""}]
    assert rows[3]["prompt"] == long_prompt
    assert read_input(source, Fields(), None) == ["a", "b", "c", "d"]
    results = {record["id"]: res for _, record, res in attribute_records(attributor, rows[:3], Fields())}
    assert results["a"].ok
    assert (results["b"].error_type, results["b"].message) == ("InputError", "the record has no 'target' field")
    assert (results["c"].error_type, results["c"].message) == ("InputError", "the target is empty")


def test_columns_without_a_name_are_left_out_and_doubled_quotes_read(tmp_path):
    """A spreadsheet's trailing commas (columns without a name, several of them) are no fields; a
    quoted field's doubled quotes and line breaks are text."""
    path = tmp_path / "r.csv"
    path.write_text('id,prompt,target,,\na,"say ""w1""\nw2",w3,,\n', encoding="utf-8")
    source = read_file(path)
    assert source.names() == ["id", "prompt", "target"]
    assert list(source) == [{"id": "a", "prompt": 'say "w1"\nw2', "target": "w3"}]
    assert read_input(source, Fields(), None) == ["a"]
