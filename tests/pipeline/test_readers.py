"""Readers: JSONL, Parquet, CSV, datasets on disk, DataFrames give the same records; attribute_dataset over each."""
import pandas as pd
import pytest

from heta_fast import ConfigError, InputError
from heta_fast.pipeline.readers import Fields, read_dataset, read_file, select_shard
from tests.pipeline.conftest import write_jsonl


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
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        list(read_file(tmp_path / "bad.jsonl"))
    with pytest.raises(ConfigError, match=".jsonl, .parquet or .csv"):
        read_file(tmp_path / "bad.txt")
    with pytest.raises(InputError, match="does not exist"):
        read_file(tmp_path / "missing.jsonl")
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
