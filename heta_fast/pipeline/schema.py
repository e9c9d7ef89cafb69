"""The row schema of a pipeline's output: one row per record, versioned (docs/pipeline.md).

A row holds the record's id, whether it succeeded, the model and configuration (and its
hash), the prompt and target, the tokens, the token marks (``special``, ``attributed``, ``sinks``, and for
chat records ``segments`` with the ``messages`` as JSON text), the score matrix and each
component as nested lists ``[n_target][n_context]`` of float64, and the phase timings. A failed record has
``ok = False``, its error type and one-line message, and nulls where the numbers would be.
"""
from __future__ import annotations

import json

from ..components import COMPONENTS
from ..result import Attribution, FailedAttribution

# 2 added the token marks (special, attributed, segments) and the chat messages.
SCHEMA_VERSION = 2
MATRICES = ("scores",) + COMPONENTS
TIMINGS = ("forward",) + COMPONENTS


def arrow_schema():
    """The pyarrow schema of version SCHEMA_VERSION (part files carry it in their metadata)."""
    import pyarrow as pa

    matrix = pa.list_(pa.list_(pa.float64()))
    fields = [("id", pa.string()), ("ok", pa.bool_()), ("error_type", pa.string()), ("message", pa.string()),
              ("schema_version", pa.int32()), ("config_hash", pa.string()), ("model", pa.string()),
              ("model_dtype", pa.string()), ("device", pa.string()), ("architecture", pa.string()),
              ("method", pa.string()),
              ("prompt", pa.string()), ("target", pa.string()), ("n_context", pa.int32()),
              ("n_target", pa.int32()), ("context_tokens", pa.list_(pa.string())),
              ("target_tokens", pa.list_(pa.string())), ("context_ids", pa.list_(pa.int64())),
              ("target_ids", pa.list_(pa.int64())), ("special", pa.list_(pa.bool_())),
              ("attributed", pa.list_(pa.bool_())), ("sinks", pa.list_(pa.bool_())), ("segments", pa.list_(pa.int32())),
              ("messages", pa.string())]
    fields += [(name, matrix) for name in MATRICES]
    fields += [(f"time_{name}", pa.float64()) for name in TIMINGS]
    fields += [("config", pa.string())]
    return pa.schema(fields, metadata={"heta_fast_schema_version": str(SCHEMA_VERSION)})


def column_names() -> list[str]:
    return arrow_schema().names


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value if not hasattr(value, "tolist") else value.tolist())
    except (TypeError, ValueError):
        return repr(value)


def result_to_row(record_id: str, result: Attribution | FailedAttribution, config_hash: str, *,
                  model: str | None = None, target=None) -> dict:
    """One output row (a dict keyed by :func:`column_names`) for one record's result.

    target: the record's target as given (the generated text for --generate runs is taken from
    the result's target tokens).
    """
    row = dict.fromkeys(column_names())
    row.update(id=str(record_id), schema_version=SCHEMA_VERSION, config_hash=config_hash, model=model,
               ok=bool(result.ok))
    if not result.ok:
        message = " ".join(str(result.message).split())
        row.update(error_type=result.error_type, message=message, prompt=_text(result.prompt),
                   target=_text(target if target is not None else result.target))
        return row
    row.update(model=result.model or model, model_dtype=result.model_dtype, device=result.device,
               architecture=result.architecture,
               method=result.method, prompt=_text(result.prompt),
               target=_text(target) if target is not None else "".join(result.target_tokens),
               n_context=len(result.context_tokens), n_target=len(result.target_tokens),
               context_tokens=list(result.context_tokens), target_tokens=list(result.target_tokens),
               context_ids=result.context_ids, target_ids=result.target_ids,
               special=result.special, attributed=result.attributed, sinks=result.sinks, segments=result.segments,
               messages=None if result.messages is None else json.dumps(result.messages, ensure_ascii=False),
               config=json.dumps(result.config, sort_keys=True))
    for name in MATRICES:
        value = getattr(result, name)
        row[name] = None if value is None else value.double().tolist()
    for name in TIMINGS:
        row[f"time_{name}"] = result.timings.get(name)
    return row


def row_to_result(row: dict) -> Attribution | FailedAttribution:
    """The Attribution (matrices as float64 [n_target, n_context] tensors) or FailedAttribution of a row."""
    import torch

    if not row["ok"]:
        return FailedAttribution(index=-1, prompt=row.get("prompt"), target=row.get("target"),
                                 error_type=row.get("error_type"), message=row.get("message"))
    t, n = int(row["n_target"]), int(row["n_context"])

    def matrix(value):
        if value is None:
            return None
        return torch.tensor([list(r) for r in value], dtype=torch.float64).reshape(t, n)

    timings = {name: row[f"time_{name}"] for name in TIMINGS if row.get(f"time_{name}") is not None}
    return Attribution(
        scores=matrix(row["scores"]), flow=matrix(row.get("flow")), curvature=matrix(row.get("curvature")),
        information=matrix(row.get("information")), context_tokens=list(row["context_tokens"]),
        target_tokens=list(row["target_tokens"]), context_ids=[int(i) for i in row["context_ids"]],
        target_ids=[int(i) for i in row["target_ids"]], prompt=row.get("prompt"), method=row.get("method") or "heta",
        model=row.get("model"), model_dtype=row.get("model_dtype"), device=row.get("device"),
        architecture=row.get("architecture"),
        config=json.loads(row["config"]) if row.get("config") else {}, timings=timings,
        special=_marks(row.get("special"), bool), attributed=_marks(row.get("attributed"), bool),
        sinks=_marks(row.get("sinks"), bool),
        segments=_marks(row.get("segments"), int),
        messages=json.loads(row["messages"]) if row.get("messages") else None)


def _marks(value, kind) -> list | None:
    return None if value is None else [kind(x) for x in value]
