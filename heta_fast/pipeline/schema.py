"""The row schema of a pipeline's output: one row per record, versioned (docs/pipeline.md).

A row holds the record's id, whether it succeeded, the model and configuration (and its
hash), the prompt and target, the tokens, the token marks (``special``, ``attributed``, ``sinks``, and for
chat records ``segments`` with the ``messages`` as JSON text), the score matrix and each
component as nested lists ``[n_target][n_context]`` of float64, and the phase timings. A failed record has
``ok = False``, its error type and one-line message, and nulls where the numbers would be.

Text that UTF-8 cannot encode (a lone surrogate: JSON's ``"\\ud800"``, a bad byte decoded with
``surrogateescape``) cannot be stored in a Parquet or JSONL part as it is: a row stores such a column's
text escaped (:func:`escape_text`) and names the column in ``escaped``, and :func:`unescape_row` gives
the text back exactly, so an escaped text is never read as the text it looks like. Likewise a prompt or
target given as something other than text (token ids) is stored as its JSON text and named in
``json_encoded``, so that a text prompt ``"[4, 5, 6]"`` is never read as token ids, nor ids as text.

A row holds a token-level result (:func:`check_storable`); ``row_checks.check_rows`` checks the
rows of a part as they are read.
"""
from __future__ import annotations

import json
import re

from ..components import COMPONENTS
from ..errors import InputError
from ..inputs import check_text
from ..result import Attribution, FailedAttribution

# 2 added the token marks (special, attributed, segments) and the chat messages; 3 the ``escaped``
# column; 4 ``json_encoded``. A version adds columns only: readers read every version in
# READABLE_VERSIONS, a column added after a part's version read as null.
SCHEMA_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)
ADDED_IN = {"escaped": 3, "json_encoded": 4}
# The columns that hold a value as the record gave it, text or (named in ``json_encoded``) its JSON.
GIVEN_VALUES = ("prompt", "target")
MATRICES = ("scores",) + COMPONENTS
TIMINGS = ("forward",) + COMPONENTS


def arrow_schema(version: int = SCHEMA_VERSION):
    """The pyarrow schema of ``version`` (part files carry it in their metadata)."""
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
    fields += [("config", pa.string()), ("escaped", pa.list_(pa.string())), ("json_encoded", pa.list_(pa.string()))]
    fields = [(name, kind) for name, kind in fields if ADDED_IN.get(name, 0) <= version]
    return pa.schema(fields, metadata={"heta_fast_schema_version": str(version)})


def column_names() -> list[str]:
    return arrow_schema().names


def _text(value) -> str | None:
    """A prompt or target as stored: text as it is, anything else (token ids) as JSON text
    (:func:`result_to_row` names such a column in ``json_encoded``)."""
    return value if value is None or isinstance(value, str) else _json(value)


def _json(value) -> str | None:
    """``value`` as JSON text, always valid JSON (a value JSON has no type for: :func:`_json_default`)."""
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError):  # a value that holds itself, a key that is not text
        return json.dumps(repr(value), ensure_ascii=False)


def _json_default(value):
    """What JSON holds for a value it has no type for: an array's or a NumPy/torch number's values, else its repr."""
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def check_storable(record_id, result: Attribution | FailedAttribution) -> None:
    """InputError unless ``result`` is one a row can hold: a failure, or a token-level success (a
    row has one score per context token and its ids; words are summed after reading)."""
    if result.ok and result.unit != "tokens":
        raise InputError(f"record {record_id!r}: a results row stores a token-level result, not one in "
                         f"{result.unit} (Attribution.aggregate()); write the token-level result and aggregate "
                         "after reading: read_results(DIR, form='attributions')[id].aggregate()")


def result_to_row(record_id: str, result: Attribution | FailedAttribution, config_hash: str, *,
                  model: str | None = None, prompt=None, target=None, messages=None) -> dict:
    """One output row (a dict keyed by :func:`column_names`) for one record's result.

    prompt, target, messages: what the record gave (``pipeline.run.record_row``; --generate: the
    generated text as the target); each None takes the result's own (a success's target: null).
    A prompt or target that is not text is stored as JSON text and named in ``json_encoded``; text
    that UTF-8 cannot encode is stored escaped and named in ``escaped`` (module docstring).
    Raises InputError for a result a row cannot hold (:func:`check_storable`).
    """
    check_storable(record_id, result)
    row = dict.fromkeys(column_names())
    values = {"prompt": prompt if prompt is not None else result.prompt,
              "target": target if target is not None or result.ok else result.target}
    given = {name: _text(value) for name, value in values.items()}
    encoded = [name for name, value in values.items() if value is not None and not isinstance(value, str)]
    row.update(id=str(record_id), schema_version=SCHEMA_VERSION, config_hash=config_hash, model=model,
               ok=bool(result.ok), messages=_json(messages if messages is not None else result.messages),
               json_encoded=encoded or None, **given)
    if not result.ok:
        row.update(error_type=result.error_type, message=" ".join(str(result.message).split()))
        return _escaped(row)
    row.update(model=result.model or model, model_dtype=result.model_dtype, device=result.device,
               architecture=result.architecture, method=result.method,
               n_context=len(result.context_tokens), n_target=len(result.target_tokens),
               context_tokens=list(result.context_tokens), target_tokens=list(result.target_tokens),
               context_ids=result.context_ids, target_ids=result.target_ids,
               special=result.special, attributed=result.attributed, sinks=result.sinks, segments=result.segments,
               config=json.dumps(result.config, sort_keys=True))
    for name in MATRICES:
        value = getattr(result, name)
        row[name] = None if value is None else value.double().tolist()
    for name in TIMINGS:
        row[f"time_{name}"] = result.timings.get(name)
    return _escaped(row)


def record_context(record, fields) -> tuple[object, object]:
    """(prompt, messages) a record gave: its messages field for a chat run (``fields.messages``),
    else its prompt field; the other is None, as is a field the record lacks."""
    given = record if isinstance(record, dict) else {}
    if fields.messages is not None:
        return None, given.get(fields.messages)
    return given.get(fields.prompt), None


def record_failure(position: int, record, fields, error_type: str, message: str) -> FailedAttribution:
    """The failure of a record the engine never attributed, with the prompt or messages it gave."""
    prompt, messages = record_context(record, fields)
    return FailedAttribution(position, prompt, None, error_type, message, messages=messages)


def decoded_target(tokenizer, result: Attribution | FailedAttribution) -> str | None:
    """A success's target as text: its target ids as ``tokenizer`` decodes them (special tokens
    kept), not its token pieces joined (a word-level tokenizer's pieces have no spaces)."""
    return tokenizer.decode(list(result.target_ids)) if result.ok else None


def record_row(record_id: str, record, result: Attribution | FailedAttribution, config_hash: str, *, fields,
               generate: int | None, attributor) -> dict:
    """The output row of one record of a run: its prompt, target and messages as it gave them
    (``fields``: the fields read), the target of --generate the generated text decoded."""
    prompt, messages = record_context(record, fields)
    if generate:
        target = decoded_target(attributor.tokenizer, result)
    else:
        target = record.get(fields.target) if isinstance(record, dict) else None
    return result_to_row(record_id, result, config_hash, model=attributor.model_name, prompt=prompt, target=target,
                         messages=messages)


def unstorable_row(row: dict, exc: BaseException) -> dict:
    """The failure row stored instead of ``row`` when a part file cannot hold it (``exc``: why; a
    value of no column's type, a non-finite number in JSONL): its id, hash and model, an OutputError."""
    out = dict.fromkeys(column_names())
    out.update({k: row.get(k) if isinstance(row.get(k), str) else None for k in ("config_hash", "model")},
               id=str(row.get("id")), ok=False, schema_version=SCHEMA_VERSION, error_type="OutputError",
               message=" ".join(f"the row cannot be stored: {type(exc).__name__}: {exc}".split()))
    return _escaped(out)


# A backslash (doubled by escape_text) or a \uXXXX that escape_text wrote for an unencodable character.
_ESCAPE = re.compile(r"\\(\\|u[0-9a-f]{4})")


def escape_text(text: str) -> str:
    """``text`` as UTF-8 can store it: each backslash doubled, then each character UTF-8 cannot
    encode (a lone surrogate) written ``\\uXXXX`` (Python's backslashreplace). :func:`unescape_text`
    undoes it; the doubled backslashes keep a literal ``\\ud800`` apart from an escaped surrogate."""
    return text.replace("\\", "\\\\").encode("utf-8", "backslashreplace").decode("utf-8")


def unescape_text(text: str) -> str:
    """The text :func:`escape_text` was given."""
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)), text)


def _encodable(value) -> bool:
    """Whether a column value can be stored as it is (not text, or text by the engine's rule, ``check_text``)."""
    if not isinstance(value, str):
        return True
    try:
        check_text(value, "column")
    except InputError:
        return False
    return True


def _escaped(row: dict) -> dict:
    """``row`` with every text column UTF-8 cannot encode escaped (a list of texts: each element) and
    named in ``escaped`` (None when none is)."""
    escaped = []
    for name, value in row.items():
        texts = value if isinstance(value, list) else [value]
        if not all(_encodable(v) for v in texts):
            row[name] = escape_text(value) if isinstance(value, str) else [
                escape_text(v) if isinstance(v, str) else v for v in value]
            escaped.append(name)
    row["escaped"] = escaped or None
    return row


def unescape_row(row: dict) -> dict:
    """A stored row (or some of its columns) with the columns its ``escaped`` names given back their
    text (``escaped`` then None, so unescaping again changes nothing)."""
    names = [name for name in row.get("escaped") or [] if name in row and row[name] is not None]
    if not row.get("escaped"):
        return row
    out = dict(row, escaped=None)
    for name in names:
        value = row[name]
        out[name] = unescape_text(value) if isinstance(value, str) else [
            unescape_text(v) if isinstance(v, str) else v for v in value]
    return out


def _given_values(row: dict) -> dict:
    """A row's prompt and target as the record gave them: the JSON text of a column that
    ``json_encoded`` names decoded (token ids: a list), other text as it is (``row`` unescaped)."""
    encoded = row.get("json_encoded") or []
    return {name: json.loads(row[name]) if name in encoded else row.get(name) for name in GIVEN_VALUES}


def row_to_result(row: dict) -> Attribution | FailedAttribution:
    """The Attribution (matrices as float64 [n_target, n_context] tensors) or FailedAttribution of a
    stored row that :func:`check_rows` has checked (escaped text given back; a failure's prompt and
    target and messages as given, :func:`_given_values`; a success's prompt as
    the engine has it: None when the record gave token ids)."""
    import torch

    row = unescape_row(row)
    given = _given_values(row)
    if not row["ok"]:
        return FailedAttribution(index=-1, prompt=given["prompt"], target=given["target"],
                                 error_type=row.get("error_type"), message=row.get("message"),
                                 messages=json.loads(row["messages"]) if row.get("messages") else None)
    t, n = int(row["n_target"]), int(row["n_context"])

    def matrix(value):
        if value is None:
            return None
        return torch.tensor(value, dtype=torch.float64).reshape(t, n)

    timings = {name: row[f"time_{name}"] for name in TIMINGS if row.get(f"time_{name}") is not None}
    return Attribution(
        scores=matrix(row["scores"]), flow=matrix(row.get("flow")), curvature=matrix(row.get("curvature")),
        information=matrix(row.get("information")), context_tokens=list(row["context_tokens"]),
        target_tokens=list(row["target_tokens"]), context_ids=_marks(row["context_ids"], int),
        target_ids=_marks(row["target_ids"], int),
        prompt=None if "prompt" in (row.get("json_encoded") or []) else row.get("prompt"),
        method=row.get("method") or "heta", model=row.get("model"), model_dtype=row.get("model_dtype"),
        device=row.get("device"), architecture=row.get("architecture"),
        config=json.loads(row["config"]) if row.get("config") else {}, timings=timings,
        special=_marks(row.get("special"), bool), attributed=_marks(row.get("attributed"), bool),
        sinks=_marks(row.get("sinks"), bool),
        segments=_marks(row.get("segments"), int),
        messages=json.loads(row["messages"]) if row.get("messages") else None)


def _marks(value, kind) -> list | None:
    return None if value is None else [kind(x) for x in value]
