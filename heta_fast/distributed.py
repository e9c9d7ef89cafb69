"""Attributing a data set on Ray Data (``pip install "heta-fast[ray]"``; docs/pipeline.md).

The input is read as a Ray dataset; ``map_batches`` runs :class:`RayAttributor`, a callable
class that loads the model once per actor (on a GPU when ``gpus_per_worker`` > 0) and turns
each batch of records into output rows (errors caught per row). The driver writes the rows
with the same :class:`~heta_fast.pipeline.writer.ResultWriter` as a local run: same schema,
same output directory rules (lock, settings hash, ids already written skipped).
"""
from __future__ import annotations

from pathlib import Path

from .config import HETAConfig
from .errors import ConfigError
from .pipeline.progress import RunProgress
from .pipeline.readers import Fields, check_unique, input_format
from .pipeline.run import attribute_records, run_settings
from .pipeline.schema import arrow_schema, result_to_row
from .pipeline.writer import DEFAULT_ROWS_PER_PART, ResultWriter
from .result import FailedAttribution

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


def _as_ray_dataset(source):
    import ray.data

    if isinstance(source, ray.data.Dataset):
        return source
    if isinstance(source, (str, Path)):
        path = str(Path(source).expanduser())
        if not Path(path).is_file():
            raise ConfigError(f"input file {path} does not exist")
        reader = {"jsonl": ray.data.read_json, "parquet": ray.data.read_parquet,
                  "csv": ray.data.read_csv}[input_format(path)]
        return reader(path, num_cpus=IO_CPUS)
    if hasattr(source, "columns") and hasattr(source, "to_dict"):
        return ray.data.from_pandas(source)
    return ray.data.from_items(list(source))


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
        ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
    import logging

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts records, failures, skips
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg, model = config or HETAConfig(), model or DEFAULT_MODEL
    ds = _as_ray_dataset(dataset).materialize()  # read once: the ids, the schema and the work share it
    ids = _ids(ds, fields.id)
    if ids and not generate and fields.target not in ds.schema().names:
        raise ConfigError(f"the input has no {fields.target!r} field; name it with --target-field, "
                          "or generate targets with --generate N")
    settings = run_settings(model, dtype, cfg, fields, generate)
    with ResultWriter(output, settings, fmt=fmt, rows_per_part=rows_per_part) as writer:
        done = writer.completed_ids(retry_failed)
        todo = sum(1 for key in ids if key not in done)
        if done:
            id_field = fields.id
            ds = ds.filter(lambda row: str(row[id_field]) not in done, num_cpus=IO_CPUS)
        counter = RunProgress(todo, skipped=len(ids) - todo, mode=progress)
        try:
            if todo:
                device = "cuda" if gpus_per_worker > 0 and device == "auto" else device
                ds = split_for_actors(ds, todo, batch_size)
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
    values = ds.select_columns([id_field]).to_pandas()[id_field].tolist()
    for position, value in enumerate(values):
        if value is None or value != value or str(value) == "":
            raise ConfigError(f"record {position} has no {id_field!r} field; name the id field with --id-field")
    ids = [str(v) for v in values]
    check_unique(ids)
    return ids
