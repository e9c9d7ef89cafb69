"""A run reads its input twice (the ids, then the records as the scheduler asks) and never holds it whole."""
import weakref

import pandas as pd
import pytest

from heta_fast import ConfigError
from heta_fast.io import read_results
from heta_fast.pipeline import readers
from heta_fast.pipeline.readers import Fields, FileRecords
from heta_fast.pipeline.run import run_to_directory
from tests.pipeline.conftest import assert_same_results, make_records, write_jsonl


class Record(dict):
    """A dict that can be watched with a weak reference."""


class Rereadable:
    """An input read again from its start on every iteration, counting the records alive."""

    def __init__(self, records, changed_on_second_reading=False, shorter_on_second_reading=False):
        self.records, self.readings, self.created, self.freed = records, 0, 0, 0
        self.changed, self.shorter = changed_on_second_reading, shorter_on_second_reading

    @property
    def alive(self) -> int:
        return self.created - self.freed

    def _freed(self):
        self.freed += 1

    def __iter__(self):
        self.readings += 1
        for position, record in enumerate(self.records):
            if self.shorter and self.readings > 1 and position == 6:
                return
            record = Record(record)
            if self.changed and self.readings > 1 and position == 4:
                record["id"] = "another"
            self.created += 1
            weakref.finalize(record, self._freed)
            yield record


def _run(attributor, source, out, **kw):
    return run_to_directory(attributor, source, out, progress="quiet", rows_per_part=4, **kw)


def test_a_run_holds_the_records_in_flight_not_the_input(attributor, tmp_path, monkeypatch):
    records = make_records(40, seed=3)
    source = Rereadable(records)
    alive = []
    group = attributor.attribute_group

    def watched(requests, *args, **kwargs):
        alive.append(source.alive)
        return group(requests, *args, **kwargs)

    monkeypatch.setattr(attributor, "attribute_group", watched)
    counter = _run(attributor, source, tmp_path / "out", lookahead=4, max_group=2)
    assert counter.done == 40 and len(alive) >= 10
    # The scheduler reads 4 ahead; a record stays until its row is written (a group of 2, one more read).
    assert max(alive) <= 8, alive
    expected = dict(attributor.attribute_dataset(records))
    assert_same_results(read_results(tmp_path / "out", form="attributions"), expected)


def test_a_one_shot_iterator_is_read_whole_first(attributor, tmp_path):
    records = make_records(6)
    _run(attributor, (r for r in records), tmp_path / "out")
    assert sorted(read_results(tmp_path / "out", form="records").id) == sorted(r["id"] for r in records)


def test_an_input_that_changes_between_its_readings_stops_the_run(attributor, tmp_path):
    source = Rereadable(make_records(8), changed_on_second_reading=True)
    with pytest.raises(ConfigError, match="record 4 now has another id"):
        _run(attributor, source, tmp_path / "out", lookahead=1, max_group=1)
    # The records answered before it are kept: a rerun on the original input continues after them.
    counter = _run(attributor, Rereadable(make_records(8)), tmp_path / "out")
    assert counter.skipped == 4 and counter.done == 4


def test_an_input_that_got_shorter_between_its_readings_stops_the_run(attributor, tmp_path):
    source = Rereadable(make_records(8), shorter_on_second_reading=True)
    with pytest.raises(ConfigError, match="ends before record 6"):
        _run(attributor, source, tmp_path / "out", lookahead=1, max_group=1)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_files_read_in_batches_give_the_records_and_their_ids_alone(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(readers, "READ_BATCH", 3)  # batch boundaries inside 12 records
    records = make_records(12)
    path = tmp_path / f"r.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, records)
    elif fmt == "parquet":
        pd.DataFrame(records).to_parquet(path)
    else:
        pd.DataFrame(records).to_csv(path, index=False)
    source = FileRecords(path)
    assert list(source) == records and list(source) == records  # read again from the start
    assert list(source.columns(["id"])) == [{"id": r["id"]} for r in records]
    assert list(source.columns(["key"])) == [{}] * 12  # a column the file lacks: records without it


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "frame", "dataset"])
def test_every_input_kind_runs_to_the_same_rows(attributor, tmp_path, monkeypatch, fmt):
    import datasets

    monkeypatch.setattr(readers, "READ_BATCH", 5)
    records = make_records(12)
    frame = pd.DataFrame(records)
    path = tmp_path / f"r.{fmt}"
    if fmt == "jsonl":
        source = FileRecords(write_jsonl(path, records))
    elif fmt == "parquet":
        frame.to_parquet(path)
        source = FileRecords(path)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
        source = FileRecords(path)
    elif fmt == "frame":
        source = frame
    else:
        source = datasets.Dataset.from_pandas(frame)
    _run(attributor, source, tmp_path / "out", shard="1/2")
    got = read_results(tmp_path / "out", form="attributions")
    expected = dict(attributor.attribute_dataset(records[1::2]))
    assert_same_results(got, expected)
    with pytest.raises(ConfigError, match="--id-field"):
        _run(attributor, source, tmp_path / "other", fields=Fields(id="key"))
