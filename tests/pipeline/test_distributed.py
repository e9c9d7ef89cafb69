"""attribute_ray on a local 2-CPU Ray instance: the local run's rows, and the same resume rule."""
import os
import sys

import pytest

from heta_fast.io import read_results
from tests.pipeline.conftest import assert_same_results, make_records, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is the optional extra heta-fast[ray] (in .[dev])")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    # Ray workers get the driver's current directory (and script directory) on their sys.path: start
    # Ray elsewhere, or the repository's kernels/ folder would shadow the installed package of that
    # name (see conftest.py at the root).
    saved_path, saved_cwd = sys.path[:], os.getcwd()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]
    os.chdir(tmp_path_factory.mktemp("ray-driver"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    finally:
        sys.path[:] = saved_path
        os.chdir(saved_cwd)
    yield
    ray.shutdown()


def test_ray_rows_equal_the_local_run_and_resume_alike(local_ray, tiny_model_dir, tmp_path):
    from heta_fast import Attributor
    from heta_fast.distributed import attribute_ray
    from heta_fast.pipeline.run import run_to_directory

    records = make_records(8, seed=2)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    attributor = Attributor.from_pretrained(str(tiny_model_dir))
    run_to_directory(attributor, records, tmp_path / "local", progress="quiet")
    # Half written by a local run: Ray computes the other half into the same directory.
    run_to_directory(attributor, records[:4], tmp_path / "out", progress="quiet")
    counter = attribute_ray(data, tmp_path / "out", model=str(tiny_model_dir), device="cpu", concurrency=2,
                            batch_size=2, progress="quiet", rows_per_part=3)
    assert (counter.done, counter.skipped, counter.failed) == (4, 4, 2)  # r5 and r7 are bad
    table = read_results(tmp_path / "out", form="records")
    assert len(table) == 8 and table.id.is_unique and table.config_hash.nunique() == 1
    assert_same_results(read_results(tmp_path / "out", form="attributions"),
                        read_results(tmp_path / "local", form="attributions"))
    again = attribute_ray(data, tmp_path / "out", model=str(tiny_model_dir), device="cpu", progress="quiet")
    assert (again.done, again.skipped) == (0, 8)


def test_a_one_block_input_is_split_into_a_block_per_batch(local_ray):
    # One block goes to one actor: unsplit, a small file kept every actor but one idle.
    from heta_fast.distributed import split_for_actors

    ds = ray.data.from_items([{"id": str(i)} for i in range(7)], override_num_blocks=1)
    split = split_for_actors(ds, 7, batch_size=2)
    assert split.num_blocks() == 4
    assert sorted(r["id"] for r in split.take_all()) == [str(i) for i in range(7)]


def test_the_driver_reads_files_as_the_local_run_does(tmp_path):
    # A field that the first record lacks is still a column (null there); CSV stays text, so an id
    # "007" is "007" as in a local run; mixed types in one field are one typed line, not a crash.
    import pandas as pd

    from heta_fast import InputError
    from heta_fast.distributed import driver_table, table_ids

    records = [{"id": "a", "prompt": "w1"}, {"id": "b", "prompt": "w2", "target": "w3"}]
    table = driver_table(write_jsonl(tmp_path / "r.jsonl", records))
    assert table.column_names == ["id", "prompt", "target"] and table.column("target").to_pylist() == [None, "w3"]
    pd.DataFrame({"id": ["007", "8"], "prompt": ["w1", "w2"], "target": ["w3", "w4"]}).to_csv(tmp_path / "r.csv",
                                                                                                index=False)
    assert table_ids(driver_table(str(tmp_path / "r.csv")), "id") == ["007", "8"]
    with pytest.raises(InputError, match="cannot be read as one table"):
        driver_table([{"id": "a", "target": "w1"}, {"id": "b", "target": [1, 2]}])
    with pytest.raises(InputError, match="mapping"):
        driver_table([{"id": "a"}, "not a record"])


def test_a_table_becomes_a_block_per_batch(local_ray):
    from heta_fast.distributed import driver_table, table_blocks

    ds = table_blocks(driver_table([{"id": str(i)} for i in range(7)]), batch_size=2)
    assert ds.num_blocks() == 4
    assert sorted(r["id"] for r in ds.take_all()) == [str(i) for i in range(7)]


def test_a_local_instance_starts_its_workers_at_the_default_priority(monkeypatch):
    # Ray's default worker niceness (15) starves the actors beside any other CPU work.
    from heta_fast import distributed

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    distributed.start_local_priority()
    assert os.environ["RAY_worker_niceness"] == "0"
    monkeypatch.setenv("RAY_worker_niceness", "5")
    distributed.start_local_priority()
    assert os.environ["RAY_worker_niceness"] == "5"
