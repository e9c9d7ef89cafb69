"""Attributing records: in input order through the scheduler, and into an output directory (resumable).

:func:`attribute_records` is the computation (``Attributor.attribute_dataset`` calls it);
:func:`run_to_directory` adds what a production run needs: the input and the output directory
checked before any work (and before the model loads, given a :class:`PendingModel`), the ids
already written skipped, results written as atomic part files, progress and a summary. It reads
its input twice, the ids and then the records as the scheduler asks for them, and so holds the
ids and the records in flight, not the input (readers.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..config import HETAConfig, as_config
from ..errors import HetaError
from ..inputs import check_token_count
from ..result import Attribution, FailedAttribution
from ..scheduler import Job, Scheduler
from .manifest import DirectoryLock, directory_settings, slot_name
from .progress import RunProgress
from .readers import Fields, fields_read, iter_records, parse_shard, read_input, records_at, reiterable
from .schema import record_context, record_failure, record_row
from .writer import DEFAULT_ROWS_PER_PART, ResultWriter, make_output_directory

Result = Attribution | FailedAttribution


@dataclass(frozen=True)
class PendingModel:
    """A model that a run loads only once its input and its output directory are checked: the
    arguments of ``Attributor.from_pretrained``. The model name and weight dtype that the run's
    settings record (:func:`run_settings`) are known without loading it."""

    name: str | None = None
    config: HETAConfig = field(default_factory=HETAConfig)
    dtype: str = "float32"
    device: str = "auto"

    def load(self):
        from ..engine import Attributor

        return Attributor.from_pretrained(self.name, self.config, dtype=self.dtype, device=self.device)


def model_identity(attributor) -> tuple[str, str]:
    """(model name, weight dtype) of an Attributor or a :class:`PendingModel`, as the settings record them."""
    if isinstance(attributor, PendingModel):
        from ..model.loading import check_load_args

        return check_load_args(attributor.name, attributor.dtype)  # the name and dtype from_pretrained uses
    return attributor.model_name, attributor.adapter.dtype_name


def check_output(output, settings: dict, shard: tuple[int, int] | None = None) -> None:
    """Refuse now, before the model loads (or Ray starts), an output directory that the writer
    would refuse when it opens: one that cannot be created, a file, one that another run is
    writing, one holding results of other settings.

    The writer checks all of it again under its lock; this check creates the directory but writes
    no manifest, so a run whose model then fails to load (a mistyped name) leaves no settings in it."""
    directory = Path(output).expanduser()
    make_output_directory(directory)
    with DirectoryLock(directory, slot_name(shard)):
        directory_settings(directory, settings)


def _field_error(record, fields: Fields, generate: int | None, position: int) -> FailedAttribution | None:
    """A failure for a record that lacks a field the run reads (the scheduler never sees it)."""
    wanted = fields_read(fields, generate)
    if not isinstance(record, dict):
        return FailedAttribution(position, None, None, "InputError", "the record is not a mapping of fields")
    missing = [f for f in wanted if f not in record]
    if missing:
        return record_failure(position, record, fields, "InputError", f"the record has no {missing[0]!r} field")
    return None


def attribute_records(attributor, records: Iterable, fields: Fields = Fields(), config: HETAConfig | None = None,
                      generate: int | None = None, lookahead: int = 32, max_group: int = 8,
                      batching: str = "auto") -> Iterator[tuple[int, dict, Result]]:
    """(position, record, result) for every record, in input order.

    records: dicts (or a DataFrame / ``datasets.Dataset``) holding ``fields.prompt`` (or chat
    messages in ``fields.messages``) and ``fields.target``; with ``generate=N`` the target is the
    model's greedy continuation of up to N tokens. A bad record yields a FailedAttribution; the others go on.
    batching: whether the scheduler's groups share model passes ("auto", "on", "off"; heta_fast/scheduler.py).
    """
    cfg = config or attributor.config
    if generate:
        for position, record in enumerate(iter_records(records)):
            failed = _field_error(record, fields, generate, position)
            if failed is None:
                prompt, messages = record_context(record, fields)
                try:
                    failed = attributor.generate_and_attribute(prompt, max_new_tokens=generate, config=cfg,
                                                               messages=messages)
                except HetaError as exc:
                    failed = record_failure(position, record, fields, type(exc).__name__, str(exc))
            yield position, record, failed
        return

    def jobs():
        for position, record in enumerate(iter_records(records)):
            failed = _field_error(record, fields, generate, position)
            if failed is not None:  # an empty request fails at admission, before the model
                yield Job((position, record, failed), "", "", cfg)
            else:
                prompt, messages = record_context(record, fields)
                yield Job((position, record, None), prompt, record[fields.target], cfg, messages=messages)

    for (position, record, failed), result in Scheduler(attributor, lookahead, max_group, batching).run(jobs()):
        if failed is None and not result.ok:
            result.index = position
        yield position, record, failed or result


def run_settings(model: str, dtype: str, config: HETAConfig, fields: Fields, generate: int | None) -> dict:
    """What the output depends on (model name, weight dtype, config, fields read, --generate); its
    hash keys the output directory (docs/pipeline.md)."""
    return {"model": model, "model_dtype": dtype, "config": config.to_dict(),
            "fields": {"prompt": fields.prompt, "target": None if generate else fields.target,
                       **({"messages": fields.messages} if fields.messages is not None else {})},
            "generate": generate}


def run_to_directory(attributor, records: Iterable, output, *, fields: Fields = Fields(),
                     config: HETAConfig | None = None, generate: int | None = None, shard: str | None = None,
                     fmt: str = "parquet", rows_per_part: int = DEFAULT_ROWS_PER_PART, retry_failed: bool = False,
                     progress: str | None = None, lookahead: int = 32, max_group: int = 8,
                     batching: str = "auto") -> RunProgress:
    """Attribute every record not yet in ``output`` and write one row per record; returns the counts.

    attributor: an Attributor, or a :class:`PendingModel` loaded once the input and ``output``
    are checked (so that bad input costs no model load).
    Raises ConfigError (a config that is not a HETAConfig, duplicate or missing ids, a field no
    record has, other settings already in ``output``), InputError (``generate`` not an integer
    >= 1, an unreadable input, an id that is not text or a number),
    OutputInUseError (another writer holds ``output``) or OSError before any work; an input
    found unreadable only later (a corrupt Parquet page) stops the run with an InputError, the
    rows written before it kept.
    progress: "bar", "log", "quiet" or None (bar on a terminal, log lines otherwise).
    batching: whether groups of records share model passes ("auto", "on", "off"; heta_fast/scheduler.py).
    """
    cfg = as_config(config, attributor.config)
    if generate is not None:
        generate = check_token_count(generate, "generate")
    index, count = parse_shard(shard) if shard else (0, 1)
    slot = (index, count) if shard else None
    # The ids first (only the id column of a columnar input), then the records a few at a time.
    source = reiterable(records)
    keys = read_input(source, fields, generate)
    selected = range(index, len(keys), count)
    settings = run_settings(*model_identity(attributor), cfg, fields, generate)
    check_output(output, settings, slot)
    if isinstance(attributor, PendingModel):
        attributor = attributor.load()
    with ResultWriter(output, settings, shard=slot, fmt=fmt, rows_per_part=rows_per_part) as writer:
        done = writer.completed_ids(retry_failed)
        todo = [i for i in selected if keys[i] not in done]  # positions in the input
        counter = RunProgress(len(todo), skipped=len(selected) - len(todo), mode=progress)
        try:
            stream = attribute_records(attributor, records_at(source, fields, keys, todo), fields, cfg, generate,
                                       lookahead, max_group, batching)
            for position, record, result in stream:
                key = keys[todo[position]]
                writer.write(record_row(key, record, result, writer.config_hash, fields=fields, generate=generate,
                                        attributor=attributor))
                counter.update(result.ok, len(result.context_tokens) if result.ok else 0)
        finally:
            counter.close(str(output))
    return counter

