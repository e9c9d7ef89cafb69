"""Attributing a data set on Ray Data (``pip install "heta-fast[ray]"``; docs/pipeline.md).

The input is read on the driver (a file, a DataFrame, dicts) and handed to Ray as a block per
batch, or given as a Ray dataset; ``map_batches`` runs :class:`RayAttributor`, a callable
class that loads the model once per actor (on a GPU when ``gpus_per_worker`` > 0) and turns
each batch of records into output rows (errors caught per row). The driver writes the rows
with the same :class:`~heta_fast.pipeline.writer.ResultWriter` as a local run: same schema,
same output directory rules (lock, settings hash, ids already written skipped).
"""
from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from .config import HETAConfig
from .errors import ConfigError, InputError
from .pipeline.progress import RunProgress
from .pipeline.readers import READ_BATCH, Fields, check_unique, is_frame, read_file, record_id
from .pipeline.run import attribute_records, run_settings
from .pipeline.schema import arrow_schema, result_to_row
from .pipeline.writer import DEFAULT_ROWS_PER_PART, ResultWriter
from .result import FailedAttribution

if TYPE_CHECKING:
    import pyarrow as pa

# Reading and filtering are I/O: they must not wait for the CPUs the model actors hold.
IO_CPUS = 0


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

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_dict("records")
        try:
            results = [r for _, _, r in self._attribute(records)]
        except Exception:  # a bug on one record must not lose the batch: retry one by one
            results = [self._one(record) for record in records]
        rows = [self._row(record, result) for record, result in zip(records, results)]
        return pa.Table.from_pylist(rows, schema=arrow_schema())

    def _attribute(self, records):
        return attribute_records(self.attributor, records, self.fields, self.config, self.generate,
                                 batching=self.batching)

    def _one(self, record):
        try:
            return next(iter(self._attribute([record])))[2]
        except Exception as exc:
            return FailedAttribution(-1, record.get(self.fields.prompt), None, type(exc).__name__, str(exc))

    def _row(self, record, result) -> dict:
        target = None if self.generate else record.get(self.fields.target)
        return result_to_row(str(record[self.fields.id]), result, self.config_hash,
                             model=self.attributor.model_name, target=target)


def start_local_priority() -> None:
    """Before a local Ray instance starts: its workers at the priority of any other process.

    Ray starts its workers at niceness 15 (``RAY_worker_niceness``), so on a machine where
    anything else runs at the default priority the actors get only the CPU left over: beside two
    evaluation runs on 2 cores, two records had not finished after 10 minutes, and took 52 s at
    niceness 0 (docs/pipeline.md). A value the user set is kept; a cluster's raylets keep their own."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def driver_table(source):
    """The input as one Arrow table read by the driver, or None for a Ray Dataset (read by Ray).

    A file path is read here, on the driver (pipeline/readers.py: JSONL and CSV as the local run
    reads them, CSV as text; Parquet as stored), so the cluster's nodes never need the file and
    the ids, the skipped records and the blocks are all decided without a Ray task. Dicts (a
    JSONL file, a list) make one column per field any record has, null where a record lacks it.
    Raises ConfigError / InputError (a file's name or existence, mixed types in one field).
    """
    import pyarrow as pa
    import ray.data

    if isinstance(source, ray.data.Dataset):
        return None
    try:
        if isinstance(source, (str, Path)):
            records = read_file(source)
            if records.format == "parquet":
                import pyarrow.parquet as pq

                return pq.read_table(records.path)
            return _table_of_dicts(iter(records))
        if is_frame(source):
            return pa.Table.from_pandas(source, preserve_index=False)
        return _table_of_dicts(iter(source))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"the input cannot be read as one table: {' '.join(str(exc).split())}") from None


def _table_of_dicts(records) -> pa.Table:
    """Dicts -> an Arrow table with a column per field of any record (a batch at a time, then joined)."""
    import pyarrow as pa

    tables = []
    while batch := list(islice(records, READ_BATCH)):
        if not all(isinstance(r, dict) for r in batch):
            raise InputError("every record must be a mapping of fields")
        tables.append(pa.Table.from_struct_array(pa.array(batch)))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def table_ids(table, id_field: str) -> list[str]:
    """Every id of the table as text, checked (present, unique) before any work."""
    if id_field not in table.column_names:
        raise ConfigError(f"the input has no {id_field!r} field; name the id field with --id-field")
    return _checked_ids(table.column(id_field).to_pylist(), id_field)


def table_blocks(table, batch_size: int):
    """A Ray dataset of ``table`` with a block per ``batch_size`` rows (an actor gets a block at a
    time, so a block per batch keeps every actor busy; see :func:`split_for_actors`)."""
    import ray.data

    slices = [table.slice(start, batch_size) for start in range(0, table.num_rows, batch_size)]
    return ray.data.from_arrow(slices)


def attribute_ray(dataset, output, *, model: str | None = None, config: HETAConfig | None = None,
                  fields: Fields = Fields(), generate: int | None = None, dtype: str = "float32",
                  device: str = "auto", concurrency: int = 2, gpus_per_worker: float = 0.0,
                  threads_per_worker: int = 1, batch_size: int = 1, fmt: str = "parquet",
                  rows_per_part: int = DEFAULT_ROWS_PER_PART, retry_failed: bool = False,
                  progress: str | None = None, ray_address: str | None = None, batching: str = "auto") -> RunProgress:
    """Attribute ``dataset`` (a ray Dataset, a .jsonl/.parquet/.csv path, a DataFrame or dicts) into ``output``.

    ``concurrency`` actors, each with ``threads_per_worker`` CPUs (and torch threads) and
    ``gpus_per_worker`` GPUs, load ``model`` once. Ray is started locally unless it is running
    or ``ray_address`` names a cluster ("auto": the one this node belongs to). ``batching``: whether
    an actor's call of ``batch_size`` records shares model passes (heta_fast/scheduler.py).
    """
    import ray

    from .model.aliases import DEFAULT_MODEL

    if concurrency < 1 or threads_per_worker < 1 or batch_size < 1 or gpus_per_worker < 0:
        raise ConfigError("--concurrency, --threads-per-worker and --batch-size must be >= 1, "
                          "--gpus-per-worker >= 0")
    if not ray.is_initialized():
        if ray_address is None:
            start_local_priority()
        ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
    import logging

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts records, failures, skips
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg, model = config or HETAConfig(), model or DEFAULT_MODEL
    table = driver_table(dataset)  # a file, a DataFrame or dicts: read here; a Ray Dataset: by Ray
    if table is None:
        ds = dataset.materialize()  # read once: the ids, the schema and the work share it
        ids, names = _ids(ds, fields.id), ds.schema().names
    else:
        ids, names = table_ids(table, fields.id), table.column_names
    if ids and not generate and fields.target not in names:
        raise ConfigError(f"the input has no {fields.target!r} field; name it with --target-field, "
                          "or generate targets with --generate N")
    settings = run_settings(model, dtype, cfg, fields, generate)
    with ResultWriter(output, settings, fmt=fmt, rows_per_part=rows_per_part) as writer:
        done = writer.completed_ids(retry_failed)
        todo = sum(1 for key in ids if key not in done)
        if done and table is None:
            id_field = fields.id
            ds = ds.filter(lambda row: str(row[id_field]) not in done, num_cpus=IO_CPUS)
        elif done:
            import pyarrow as pa

            table = table.filter(pa.array([key not in done for key in ids]))
        counter = RunProgress(todo, skipped=len(ids) - todo, mode=progress)
        try:
            if todo:
                device = "cuda" if gpus_per_worker > 0 and device == "auto" else device
                ds = split_for_actors(ds, todo, batch_size) if table is None else table_blocks(table, batch_size)
                pool = ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1)
                mapped = ds.map_batches(
                    RayAttributor, batch_size=batch_size, batch_format="pandas",
                    compute=pool, num_cpus=threads_per_worker,
                    num_gpus=gpus_per_worker or None,
                    fn_constructor_kwargs=dict(model=model, config=cfg.to_dict(), fields=fields, generate=generate,
                                               dtype=dtype, device=device, threads=threads_per_worker,
                                               config_hash=writer.config_hash, batching=batching))
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
    """Every id of the dataset as text, checked (present, unique) before any work."""
    if id_field not in ds.schema().names:
        raise ConfigError(f"the input has no {id_field!r} field; name the id field with --id-field")
    return _checked_ids(ds.select_columns([id_field]).to_pandas()[id_field].tolist(), id_field)


def _checked_ids(values: list, id_field: str) -> list[str]:
    """Ids as text by the local run's rule (:func:`~.pipeline.readers.record_id`); a missing or
    empty one, or a duplicate, is a ConfigError."""
    fields = Fields(id=id_field)
    ids = [record_id({id_field: value}, fields, position) for position, value in enumerate(values)]
    check_unique(ids)
    return ids
