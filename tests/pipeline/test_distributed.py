"""attribute_ray on a local 2-CPU Ray instance: the local run's rows, and the same resume rule."""
import os
import sys

import pytest

from heta_fast import allocator
from heta_fast.io import read_results
from heta_fast.pipeline.readers import Fields
from tests.pipeline.conftest import assert_same_results, make_records, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is the optional extra heta-fast[ray] (in .[dev])")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    # Ray workers get the driver's current directory (and script directory) on their sys.path: start
    # Ray elsewhere, or the repository's kernels/ folder would shadow the installed package of that
    # name (see conftest.py at the root).
    # Its workers at the default priority, as `run --ray` starts them: at Ray's niceness 15 the
    # actors get a few percent of a core while anything else runs (a suite beside an evaluation).
    from heta_fast.distributed import start_local_priority

    saved_path, saved_cwd, saved_nice = sys.path[:], os.getcwd(), os.environ.get("RAY_worker_niceness")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]
    os.chdir(tmp_path_factory.mktemp("ray-driver"))
    try:
        start_local_priority()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    finally:
        sys.path[:] = saved_path
        os.chdir(saved_cwd)
        if saved_nice is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = saved_nice
    yield
    ray.shutdown()


def test_ray_rows_equal_the_local_run_and_resume_alike(local_ray, tiny_model_dir, tmp_path):
    from heta_fast import Attributor
    from heta_fast.distributed import attribute_ray
    from heta_fast.pipeline.run import run_to_directory

    # r8 has no target field: under Ray as locally it is its own failure row, not a null target.
    records = make_records(8, seed=2) + [{"id": "r8", "prompt": "w1 w2"}]
    data = write_jsonl(tmp_path / "in.jsonl", records)
    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    run_to_directory(attributor, records, tmp_path / "local", progress="quiet")
    # Half written by a local run: Ray computes the other half into the same directory.
    run_to_directory(attributor, records[:4], tmp_path / "out", progress="quiet")
    counter = attribute_ray(data, tmp_path / "out", model=str(tiny_model_dir), device="cpu", concurrency=2,
                            batch_size=2, progress="quiet", rows_per_part=3)
    assert (counter.done, counter.skipped, counter.failed) == (5, 4, 3)  # r5, r7 and r8 are bad
    table = read_results(tmp_path / "out", form="records")
    assert len(table) == 9 and table.id.is_unique and table.config_hash.nunique() == 1
    assert table.set_index("id").loc["r8", "message"] == "the record has no 'target' field"
    assert_same_results(read_results(tmp_path / "out", form="attributions"),
                        read_results(tmp_path / "local", form="attributions"))
    again = attribute_ray(data, tmp_path / "out", model=str(tiny_model_dir), device="cpu", progress="quiet")
    assert (again.done, again.skipped) == (0, 9)


def test_run_ray_reads_a_saved_data_set_as_a_local_run_does(local_ray, tiny_model_dir, tmp_path, capsys):
    # `heta-fast run --ray --dataset DIR`: the memory-mapped data set is read on the driver, a block at a time.
    datasets = pytest.importorskip("datasets")
    from heta_fast import Attributor
    from heta_fast.cli import main
    from heta_fast.pipeline.run import run_to_directory

    records = make_records(5, seed=4)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    run_to_directory(Attributor.from_pretrained(str(tiny_model_dir)), records, tmp_path / "local", progress="quiet")
    assert main(["run", "-q", "--ray", "--concurrency", "1", "--device", "cpu", "--model", str(tiny_model_dir),
                 "--dataset", str(tmp_path / "ds"), "--output", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert_same_results(read_results(tmp_path / "out", form="attributions"),
                        read_results(tmp_path / "local", form="attributions"))


def test_bad_input_stops_before_ray_starts(monkeypatch, tmp_path):
    # A missing file, a duplicate id or a wrong field flag is one typed line, with no Ray instance started.
    from heta_fast import ConfigError, InputError
    from heta_fast.distributed import attribute_ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(InputError, match="does not exist"):
        attribute_ray(str(tmp_path / "missing.jsonl"), tmp_path / "out")
    with pytest.raises(ConfigError, match="duplicate id 'a'"):
        attribute_ray([{"id": "a", "prompt": "w1", "target": "w2"}] * 2, tmp_path / "out")
    with pytest.raises(ConfigError, match="--memory-per-worker must be a positive number of bytes"):
        attribute_ray([{"id": "a", "prompt": "w1", "target": "w2"}], tmp_path / "out", memory_per_worker=0)
    with pytest.raises(ConfigError, match="no 'answer' field"):
        attribute_ray([{"id": "a", "prompt": "w1", "target": "w2"}], tmp_path / "out",
                      fields=Fields(target="answer"))
    one = [{"id": "a", "prompt": "w1", "target": "w2"}]
    with pytest.raises(ConfigError, match="config must be a HETAConfig"):
        attribute_ray(one, tmp_path / "out", config={"beta": 1.0})
    for generate in (0, True, 1.5):  # 0 was read as "no generation", the others as failure rows
        with pytest.raises(InputError, match="generate must be an integer >= 1"):
            attribute_ray(one, tmp_path / "out", generate=generate)
    assert not (tmp_path / "out").exists()


def test_actors_reserve_memory_and_start_with_the_allocator_setting(local_ray, tiny_model_dir, tmp_path, monkeypatch):
    # Ray places an actor on a node only where the memory it reserves is free; the rows are the same.
    from heta_fast import Attributor
    from heta_fast.distributed import attribute_ray
    from heta_fast.pipeline.run import run_to_directory

    reserved, environments = [], []
    map_batches = ray.data.Dataset.map_batches

    def spy(self, fn, **kwargs):
        reserved.append(kwargs.get("memory"))
        environments.append(kwargs.get("runtime_env"))
        return map_batches(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spy)
    records = make_records(3, seed=5)
    run_to_directory(Attributor.from_pretrained(str(tiny_model_dir)), records, tmp_path / "local", progress="quiet")
    attribute_ray(records, tmp_path / "out", model=str(tiny_model_dir), device="cpu", concurrency=1,
                  memory_per_worker=256 << 20, progress="quiet")
    assert reserved == [256 << 20]
    # The actors' processes start with glibc keeping freed memory (heta_fast/allocator.py).
    expected = {"env_vars": allocator.worker_environment()} if allocator.worker_environment() else None
    assert environments == [expected]
    assert_same_results(read_results(tmp_path / "out", form="attributions"),
                        read_results(tmp_path / "local", form="attributions"))


def test_a_one_block_input_is_split_into_a_block_per_batch(local_ray):
    # One block goes to one actor: unsplit, a small file kept every actor but one idle.
    from heta_fast.distributed import split_for_actors

    ds = ray.data.from_items([{"id": str(i)} for i in range(7)], override_num_blocks=1)
    split = split_for_actors(ds, 7, batch_size=2)
    assert split.num_blocks() == 4
    assert sorted(r["id"] for r in split.take_all()) == [str(i) for i in range(7)]


def test_the_driver_sends_each_record_as_the_local_run_reads_it(tmp_path):
    # Pickled whole: a field some records lack stays absent (not null), CSV stays text (an id "007"
    # is "007"), and values of different types in one field travel as they are.
    import pandas as pd

    from heta_fast.distributed import _batch_records, driver_blocks
    from heta_fast.pipeline.readers import read_file, read_ids

    records = [{"id": "a", "prompt": "w1"}, {"id": "b", "prompt": "w2", "target": "w3"},
               {"id": 3, "prompt": "w4", "target": [1, 2]}]
    source = read_file(write_jsonl(tmp_path / "r.jsonl", records))
    blocks = list(driver_blocks(read_ids(source, Fields()), source, batch_size=2))
    assert [b.num_rows for b in blocks] == [2, 1]
    keys, got = zip(*(pair for block in blocks for pair in zip(*_batch_records(block, "id"))))
    assert keys == ("a", "b", "3") and list(got) == records
    pd.DataFrame({"id": ["007", "8"], "prompt": ["w1", "w2"], "target": ["w3", "w4"]}).to_csv(tmp_path / "r.csv",
                                                                                                index=False)
    source = read_file(str(tmp_path / "r.csv"))
    (block,) = driver_blocks(read_ids(source, Fields()), source, batch_size=4)
    assert _batch_records(block, "id") == (["007", "8"], list(source))
    assert list(source)[0] == {"id": "007", "prompt": "w1", "target": "w3"}


def test_driver_blocks_become_a_ray_block_each(local_ray, monkeypatch):
    # A block per batch of B records keeps every actor busy; parts of 2 blocks check the union.
    from heta_fast import distributed
    from heta_fast.distributed import _batch_records, driver_blocks, driver_dataset

    monkeypatch.setattr(distributed, "BLOCKS_PER_PART", 2)
    records = [{"id": str(i)} for i in range(7)]
    ds = driver_dataset(driver_blocks([r["id"] for r in records], records, batch_size=2))
    batches = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert sorted(b.num_rows for b in batches) == [1, 2, 2, 2]
    assert sorted(r["id"] for b in batches for r in _batch_records(b, "id")[1]) == [str(i) for i in range(7)]


def test_a_local_instance_starts_its_workers_at_the_default_priority(monkeypatch):
    # Ray's default worker niceness (15) starves the actors beside any other CPU work.
    from heta_fast import distributed

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    distributed.start_local_priority()
    assert os.environ["RAY_worker_niceness"] == "0"
    monkeypatch.setenv("RAY_worker_niceness", "5")
    distributed.start_local_priority()
    assert os.environ["RAY_worker_niceness"] == "5"
