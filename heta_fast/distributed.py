"""Attributing a data set on Ray Data (``pip install "heta-fast[ray]"``; docs/pipeline.md).

The input is read on the driver (a file, a DataFrame, dicts) as a local run reads it, ids first
and then the records, and handed to Ray a block of records at a time; or it is given as a Ray
dataset. ``map_batches`` runs :class:`RayAttributor`, a callable class that loads the model
once per actor (on a GPU when ``gpus_per_worker`` > 0) and turns each batch of records into
output rows (errors caught per row). The driver writes the rows with the same
:class:`~heta_fast.pipeline.writer.ResultWriter` as a local run: same schema, same output
directory rules (lock, settings hash, ids already written skipped).
"""
from __future__ import annotations

import math
import os
import pickle
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from .allocator import worker_environment
from .config import HETAConfig, as_config
from .errors import ConfigError
from .inputs import check_token_count
from .pipeline.parts import rows_table
from .pipeline.progress import RunProgress
from .pipeline.readers import Fields, check_fields, read_file, read_ids, read_input, records_at, reiterable
from .pipeline.run import attribute_records, check_output, run_settings
from .pipeline.schema import record_failure, record_row
from .pipeline.writer import DEFAULT_ROWS_PER_PART, ResultWriter

if TYPE_CHECKING:
    import pyarrow as pa

# Reading and filtering are I/O: they must not wait for the CPUs the model actors hold.
IO_CPUS = 0
# A driver block has two columns: the record's checked id, and the record itself pickled, so an
# actor gets exactly the dict a local run reads (no column made up for a field some record lacks,
# no value converted to fit a column type shared with other records).
KEY_COLUMN = "__heta_fast_id__"
RECORD_COLUMN = "__heta_fast_record__"


class RayAttributor:
    """Ray Data callable class: loads the model once per actor; pandas batch -> Arrow table of output rows."""

    def __init__(self, model, config: dict, fields: Fields, generate, dtype: str, device: str, threads: int,
                 config_hash: str, batching: str = "auto"):
        import torch

        from .engine import Attributor

        torch.set_num_threads(max(int(threads), 1))
        self.config = HETAConfig.from_dict(config)
        self.attributor = Attributor.from_pretrained(model, config=self.config, dtype=dtype, device=device)
        self.fields, self.generate, self.config_hash, self.batching = fields, generate, config_hash, batching

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys, records = _batch_records(batch, self.fields.id)
        try:
            results = [r for _, _, r in self._attribute(records)]
        except Exception:  # a bug on one record must not lose the batch: retry one by one
            results = [self._one(record) for record in records]
        rows = [self._row(key, record, result) for key, record, result in zip(keys, records, results)]
        return rows_table(rows)  # a row no part can hold becomes its failure row, not a lost batch

    def _attribute(self, records):
        return attribute_records(self.attributor, records, self.fields, self.config, self.generate,
                                 batching=self.batching)

    def _one(self, record):
        try:
            return next(iter(self._attribute([record])))[2]
        except Exception as exc:
            return record_failure(-1, record, self.fields, type(exc).__name__, str(exc))

    def _row(self, key: str, record: dict, result) -> dict:
        return record_row(key, record, result, self.config_hash, fields=self.fields, generate=self.generate,
                          attributor=self.attributor)


def _batch_records(batch: pa.Table, id_field: str) -> tuple[list[str], list[dict]]:
    """(ids, records) of a batch: a driver block's pickled records under their checked ids, or the
    rows of a Ray Dataset (ids as text)."""
    if RECORD_COLUMN in batch.column_names:
        return (batch.column(KEY_COLUMN).to_pylist(),
                [pickle.loads(data) for data in batch.column(RECORD_COLUMN).to_pylist()])
    records = batch.to_pylist()
    return [str(r[id_field]) for r in records], records


def start_local_priority() -> None:
    """Before a local Ray instance starts: its workers at the priority of any other process.

    Ray starts its workers at niceness 15 (``RAY_worker_niceness``), so on a machine where
    anything else runs at the default priority the actors get only the CPU left over: beside two
    evaluation runs on 2 cores, two records had not finished after 10 minutes, and took 52 s at
    niceness 0 (docs/pipeline.md). A value the user set is kept; a cluster's raylets keep their own."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def driver_blocks(keys: Iterable[str], records: Iterable[dict], batch_size: int) -> Iterator[pa.Table]:
    """Arrow tables of up to ``batch_size`` records each: column KEY_COLUMN the ids, RECORD_COLUMN
    each record pickled. Reads ``records`` a batch at a time (the driver holds one batch)."""
    import pyarrow as pa

    keys, records = iter(keys), iter(records)
    while batch := list(islice(records, batch_size)):
        yield pa.table({KEY_COLUMN: pa.array(list(islice(keys, len(batch))), pa.string()),
                        RECORD_COLUMN: pa.array([pickle.dumps(r) for r in batch], pa.binary())})


# Blocks per ``ray.data.from_blocks`` call: the driver holds at most this many blocks at a time.
BLOCKS_PER_PART = 4096


def driver_dataset(blocks: Iterable[pa.Table]):
    """A Ray dataset with one Ray block per driver block, put into Ray's object store a part of
    BLOCKS_PER_PART blocks at a time and the parts joined with ``union``.

    ``from_blocks`` reads each block's size and schema on the driver; ``from_arrow_refs`` (which
    ``from_arrow`` calls) runs one Ray task per block for them: 6,250 blocks took 631 s here,
    beside two other processes on 2 cores, before any actor could start (from_blocks: 2 ms a block).
    """
    import ray.data

    blocks, parts = iter(blocks), []
    while part := list(islice(blocks, BLOCKS_PER_PART)):
        parts.append(ray.data.from_blocks(part))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def attribute_ray(dataset, output, *, model: str | None = None, config: HETAConfig | None = None,
                  fields: Fields = Fields(), generate: int | None = None, dtype: str = "float32",
                  device: str = "auto", concurrency: int = 2, gpus_per_worker: float = 0.0,
                  threads_per_worker: int = 1, batch_size: int = 1, memory_per_worker: int | None = None,
                  fmt: str = "parquet",
                  rows_per_part: int = DEFAULT_ROWS_PER_PART, retry_failed: bool = False,
                  progress: str | None = None, ray_address: str | None = None, batching: str = "auto") -> RunProgress:
    """Attribute ``dataset`` (a ray Dataset, a .jsonl/.parquet/.csv path, a DataFrame or dicts) into ``output``.

    ``concurrency`` actors, each with ``threads_per_worker`` CPUs (and torch threads) and
    ``gpus_per_worker`` GPUs, load ``model`` once; ``memory_per_worker`` bytes, when given, are
    reserved for each actor so that Ray places on a node only the actors its memory holds (an
    actor's resident memory is the model, the memory budget and the runtime: about 3 to 3.6 GB for
    the default model and budget, docs/pipeline.md). Ray is started locally unless it is running
    or ``ray_address`` names a cluster ("auto": the one this node belongs to). ``batching``: whether
    an actor's call of ``batch_size`` records shares model passes (heta_fast/scheduler.py).
    """
    import ray
    import ray.data

    from .model.aliases import DEFAULT_MODEL

    if concurrency < 1 or threads_per_worker < 1 or batch_size < 1:
        raise ConfigError("--concurrency, --threads-per-worker and --batch-size must be >= 1")
    if not (math.isfinite(gpus_per_worker) and gpus_per_worker >= 0):  # nan is not < 0 either
        raise ConfigError(f"--gpus-per-worker must be a finite number >= 0, got {gpus_per_worker}")
    if memory_per_worker is not None and memory_per_worker < 1:
        raise ConfigError(f"--memory-per-worker must be a positive number of bytes, got {memory_per_worker}")
    cfg, model = as_config(config, HETAConfig()), model or DEFAULT_MODEL
    if generate is not None:
        generate = check_token_count(generate, "generate")
    source = None
    if not isinstance(dataset, ray.data.Dataset):
        # A file, a data set, a DataFrame or dicts: read on the driver as a local run reads them
        # (the ids now, before Ray starts, so bad input costs no Ray start; the records later).
        source = reiterable(read_file(dataset) if isinstance(dataset, (str, Path)) else dataset)
        keys = read_input(source, fields, generate)
    settings = run_settings(model, dtype, cfg, fields, generate)
    check_output(output, settings)  # before Ray starts, as the input
    if not ray.is_initialized():
        if ray_address is None:
            start_local_priority()
        ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
    import logging

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts records, failures, skips
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if source is None:
        ds = dataset.materialize()  # read once: the ids, the schema and the work share it
        keys = _ids(ds, fields.id)
        if keys:
            check_fields(ds.schema().names, fields, generate)
    with ResultWriter(output, settings, fmt=fmt, rows_per_part=rows_per_part) as writer:
        done = writer.completed_ids(retry_failed)
        todo = [position for position, key in enumerate(keys) if key not in done]
        counter = RunProgress(len(todo), skipped=len(keys) - len(todo), mode=progress)
        try:
            if todo:
                if source is None:
                    if done:
                        id_field = fields.id
                        ds = ds.filter(lambda row: str(row[id_field]) not in done, num_cpus=IO_CPUS)
                    ds = split_for_actors(ds, len(todo), batch_size)
                else:  # the blocks go to Ray's object store (spilled to disk when full), not the driver's memory
                    ds = driver_dataset(driver_blocks((keys[i] for i in todo), records_at(source, fields, keys, todo),
                                                      batch_size))
                device = "cuda" if gpus_per_worker > 0 and device == "auto" else device
                # Ray calls an actor on a thread of its own, whose heap gave freed blocks back to the
                # kernel after every record (1.4-4.5 system-seconds each): the actor's process starts
                # with glibc keeping them (heta_fast/allocator.py), unless the user set malloc's variables.
                environment = worker_environment()
                remote_args = {"runtime_env": {"env_vars": environment}} if environment else {}
                pool = ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1)
                mapped = ds.map_batches(
                    RayAttributor, batch_size=batch_size, batch_format="pyarrow",
                    compute=pool, num_cpus=threads_per_worker,
                    num_gpus=gpus_per_worker or None, memory=memory_per_worker,
                    fn_constructor_kwargs=dict(model=model, config=cfg.to_dict(), fields=fields, generate=generate,
                                               dtype=dtype, device=device, threads=threads_per_worker,
                                               config_hash=writer.config_hash, batching=batching),
                    **remote_args)
                for table in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
                    for row in table.to_pylist():
                        writer.write(row)
                        counter.update(row["ok"], row["n_context"] or 0)
        finally:
            counter.close(str(output))
    return counter


def split_for_actors(ds, n_records: int, batch_size: int):
    """``ds`` (``n_records`` rows) as materialised blocks of ``batch_size`` rows.

    A small input is read as one block, and Ray hands a block to one actor whatever
    ``batch_size`` says: unsplit, one actor did all the work while the others waited. The split
    is materialised before any actor exists: once the actors hold every CPU, a repartition task
    would wait for one for ever.
    """
    return ds.repartition(num_blocks=max(1, -(-n_records // batch_size))).materialize()


def _ids(ds, id_field: str) -> list[str]:
    """Every id of the dataset as text by the local run's rule, checked (present, unique) before any work."""
    if id_field not in ds.schema().names:
        raise ConfigError(f"the input has no {id_field!r} field; name the id field with --id-field")
    values = ds.select_columns([id_field]).to_pandas()[id_field].tolist()
    return read_ids([{id_field: value} for value in values], Fields(id=id_field))
