"""Attributing records: in input order through the scheduler, and into an output directory (resumable).

:func:`attribute_records` is the computation (``Attributor.attribute_dataset`` calls it);
:func:`run_to_directory` adds what a production run needs: ids checked before any work, the
ids already written skipped, results written as atomic part files, progress and a summary. It
reads its input twice, the ids and then the records as the scheduler asks for them, and so holds
the ids and the records in flight, not the input (readers.py).
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

from ..config import HETAConfig
from ..errors import HetaError
from ..result import Attribution, FailedAttribution
from ..scheduler import Job, Scheduler
from .progress import RunProgress
from .readers import Fields, check_fields, iter_records, parse_shard, read_ids, records_at, reiterable
from .schema import record_context, record_failure, record_row
from .writer import DEFAULT_ROWS_PER_PART, ResultWriter

Result = Attribution | FailedAttribution


def _field_error(record, fields: Fields, generate: int | None, position: int) -> FailedAttribution | None:
    """A failure for a record that lacks a field the run reads (the scheduler never sees it)."""
    wanted = [fields.context] + ([] if generate else [fields.target])
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

    Raises ConfigError (duplicate or missing ids, other settings already in ``output``),
    OutputInUseError (another writer holds ``output``) or OSError before any work.
    progress: "bar", "log", "quiet" or None (bar on a terminal, log lines otherwise).
    batching: whether groups of records share model passes ("auto", "on", "off"; heta_fast/scheduler.py).
    """
    cfg = config or attributor.config
    # The ids first (only the id column of a columnar input), then the records a few at a time.
    source = reiterable(records)
    keys = read_ids(source, fields)
    index, count = parse_shard(shard) if shard else (0, 1)
    selected = range(index, len(keys), count)
    first = next(islice(iter_records(source), index, None), None) if selected else None
    if first is not None:  # the shard's first record: a wrong field flag stops the run here
        check_fields(first, fields, generate)
    settings = run_settings(attributor.model_name, str(attributor.adapter.dtype).removeprefix("torch."), cfg, fields,
                            generate)
    with ResultWriter(output, settings, shard=(index, count) if shard else None, fmt=fmt,
                      rows_per_part=rows_per_part) as writer:
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

