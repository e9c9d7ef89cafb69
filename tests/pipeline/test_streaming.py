"""A run reads its input twice (the ids, then the records as the scheduler asks) and never holds it whole."""
import weakref

import pandas as pd
import pytest

from heta_fast import ConfigError, InputError
from heta_fast.io import read_results
from heta_fast.pipeline import readers
from heta_fast.pipeline.readers import Fields, FileRecords
from heta_fast.pipeline.run import run_to_directory
from tests.pipeline.conftest import assert_same_results, corrupt_prompts, make_records, write_records


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
    source = FileRecords(write_records(tmp_path / f"r.{fmt}", records))
    assert list(source) == records and list(source) == records  # read again from the start
    assert list(source.columns(["id"])) == [{"id": r["id"]} for r in records]
    assert list(source.columns(["key"])) == [{}] * 12  # a column the file lacks: records without it


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "frame", "dataset"])
def test_every_input_kind_runs_to_the_same_rows(attributor, tmp_path, monkeypatch, fmt):
    import datasets

    monkeypatch.setattr(readers, "READ_BATCH", 5)
    records = make_records(12)
    frame = pd.DataFrame(records)
    if fmt == "frame":
        source = frame
    elif fmt == "dataset":
        source = datasets.Dataset.from_pandas(frame)
    else:
        source = FileRecords(write_records(tmp_path / f"r.{fmt}", records))
    _run(attributor, source, tmp_path / "out", shard="1/2")
    got = read_results(tmp_path / "out", form="attributions")
    expected = dict(attributor.attribute_dataset(records[1::2]))
    assert_same_results(got, expected)
    with pytest.raises(ConfigError, match="--id-field"):
        _run(attributor, source, tmp_path / "other", fields=Fields(id="key"))


def test_a_file_found_unreadable_mid_run_stops_it_keeping_the_rows_written(attributor, tmp_path, monkeypatch):
    """A Parquet file whose ids read but whose third row group is corrupt: the records before it
    are attributed and written, then the run stops with an InputError naming the file; once the
    file is mended, a rerun continues after the rows written."""
    monkeypatch.setattr(readers, "READ_BATCH", 4)  # a batch per row group
    records = make_records(12)
    path = corrupt_prompts(tmp_path / "r.parquet", records)
    with pytest.raises(InputError, match=f"{path}: not a readable Parquet file"):
        run_to_directory(attributor, FileRecords(path), tmp_path / "out", progress="quiet", rows_per_part=1,
                         lookahead=1, max_group=1)
    written = read_results(tmp_path / "out", form="records")
    assert sorted(written.id) == [f"r{i}" for i in range(8)]  # the first two row groups
    pd.DataFrame(records).to_parquet(path)
    counter = _run(attributor, FileRecords(path), tmp_path / "out")
    assert (counter.skipped, counter.done) == (8, 4)
