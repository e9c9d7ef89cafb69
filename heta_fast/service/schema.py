"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema).

Engine options are only shaped here (types); their values are checked by ``HETAConfig`` itself,
so the service and the library accept exactly the same configurations. The request's types are
strict, as the library is: pydantic's default (lax) mode would read ``true`` as the id 1, ``"0.7"``
as a number, ``3.0`` as a count or ``"yes"`` as a bool, all of which the library refuses. The one
conversion kept is the library's own: an integer where a float is expected (``beta: 1``).
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from ..client import OPTION_FIELDS


def shown(value, limit: int = 60) -> str:
    """``value`` as the client wrote it (JSON), clipped to ``limit`` characters, for messages."""
    try:
        text = json.dumps(value, default=repr)
    except ValueError:  # an integer of more digits than Python converts to text (sys.set_int_max_str_digits)
        text = f"{type(value).__name__} too long to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_of(what: str) -> WrapValidator:
    """A union's several errors as one message: "must be <what>", then the element or value that is not."""

    def check(value, handler):
        try:
            return handler(value)
        except ValidationError as exc:
            got = f"got {shown(value)}"
            if isinstance(value, list):  # the first element the list member refused, if any
                index = next((p for e in exc.errors() for p in e["loc"] if isinstance(p, int)), None)
                got = got if index is None else f"element {index} is {shown(value[index])}"
            raise PydanticCustomError("type_error", "must be {what}; {got}", {"what": what, "got": got}) from None

    return WrapValidator(check)


def finite_seconds(limit: float) -> WrapValidator:
    """A number of seconds in [0, ``limit``], NaN and infinities refused with that one message (the
    bounds' own message would call NaN too large)."""

    def check(value, handler):
        try:
            seconds = handler(value)
        except ValidationError:
            seconds = None
        if seconds is None or not math.isfinite(seconds):
            raise PydanticCustomError("value_error", "must be a finite number of seconds in [0, {limit}]; got {got}",
                                      {"limit": f"{limit:g}", "got": shown(value)})
        return seconds

    return WrapValidator(check)


# Text, or token ids (JSON integers only, never true/false, 4.0 or "4", as tokenize_prompt/target).
TextOrIds = Annotated[Union[StrictStr, list[StrictInt]], _one_of("text or a list of integer token ids")]
# A component name or a list of them (HETAConfig.components takes both).
Components = Annotated[Union[StrictStr, list[StrictStr]], _one_of("a component name or a list of them")]


class EngineOptions(BaseModel):
    """Per-request HETA options; unset fields take the server's configuration (``GET /v1/models``)."""

    model_config = ConfigDict(extra="forbid")
    beta: Optional[StrictFloat] = None
    gamma: Optional[StrictFloat] = None
    components: Optional[Components] = None
    estimator: Optional[StrictStr] = None
    num_probes: Optional[StrictInt] = None
    probing_patterns: Optional[StrictInt] = None
    probing_repeats: Optional[StrictInt] = None
    sketch_rank: Optional[StrictInt] = None
    seed: Optional[StrictInt] = None
    mask_scheme: Optional[StrictStr] = None
    information_estimator: Optional[StrictStr] = None
    information_rank: Optional[StrictInt] = None
    information_span: Optional[StrictInt] = None
    precision: Optional[StrictStr] = None
    window_size: Optional[StrictInt] = None
    window_overlap: Optional[StrictFloat] = None
    layer_subset: Optional[StrictInt] = None
    use_fisher: Optional[StrictBool] = None
    template_tokens: Optional[StrictStr] = None
    term_scale: Optional[StrictStr] = None
    sinks: Optional[StrictStr] = None
    sink_threshold: Optional[StrictFloat] = None
    sink_token: Optional[StrictStr] = None

    def changes(self) -> dict:
        """The fields the request sets, for ``HETAConfig.replace``."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k in OPTION_FIELDS}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: StrictStr
    content: StrictStr


class AttributionRequest(BaseModel):
    """Exactly one of ``prompt`` and ``messages`` (rendered with the model's chat template), and
    exactly one of ``target`` (text or token ids) and ``generate`` (attribute the greedy
    continuation of up to N tokens)."""

    model_config = ConfigDict(extra="forbid")
    prompt: Optional[TextOrIds] = None
    messages: Optional[list[ChatMessage]] = None
    target: Optional[TextOrIds] = None
    generate: Optional[StrictInt] = Field(default=None, description="number of tokens to generate and attribute")
    options: Optional[EngineOptions] = None


Status = Literal["queued", "running", "done", "failed", "cancelled"]


class JobError(BaseModel):
    type: str
    message: str


class JobProgress(BaseModel):
    phase: str
    done: int
    total: int
    unit: str


class JobView(BaseModel):
    """A job's state; ``result`` (when done) is ``Attribution.to_dict()`` (with ``format_version``)."""

    id: str
    status: Status
    phase: Optional[str] = None
    progress: Optional[JobProgress] = None
    error: Optional[JobError] = None
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    result: Optional[dict] = None
    results_file_error: Optional[str] = Field(
        default=None, description="a done job whose file in the service's --results-dir could not be written: why "
        "(the result itself is complete)")


class ModelInfo(BaseModel):
    name: Optional[str]
    architecture: Optional[str]
    model_type: Optional[str]
    dtype: str
    device: str
    max_context: Optional[int]
    special_tokens: list[str]
    config: dict


class ModelsView(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
