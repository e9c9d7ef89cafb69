"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema).

Engine options are only shaped here (types); their values are checked by ``HETAConfig`` itself,
so the service and the library accept exactly the same configurations.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..client import OPTION_FIELDS

Text = str
Ids = list[int]


class EngineOptions(BaseModel):
    """Per-request HETA options; unset fields take the server's configuration (``GET /v1/models``)."""

    model_config = ConfigDict(extra="forbid")
    beta: Optional[float] = None
    gamma: Optional[float] = None
    components: Optional[list[str]] = None
    estimator: Optional[str] = None
    num_probes: Optional[int] = None
    probing_patterns: Optional[int] = None
    probing_repeats: Optional[int] = None
    sketch_rank: Optional[int] = None
    seed: Optional[int] = None
    mask_scheme: Optional[str] = None
    information_estimator: Optional[str] = None
    information_rank: Optional[int] = None
    information_span: Optional[int] = None
    precision: Optional[str] = None
    window_size: Optional[int] = None
    window_overlap: Optional[float] = None
    layer_subset: Optional[int] = None
    use_fisher: Optional[bool] = None
    template_tokens: Optional[str] = None
    term_scale: Optional[str] = None
    sinks: Optional[str] = None
    sink_threshold: Optional[float] = None
    sink_token: Optional[str] = None

    def changes(self) -> dict:
        """The fields the request sets, for ``HETAConfig.replace``."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k in OPTION_FIELDS}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str


class AttributionRequest(BaseModel):
    """Exactly one of ``prompt`` and ``messages`` (rendered with the model's chat template), and
    exactly one of ``target`` (text or token ids) and ``generate`` (attribute the greedy
    continuation of up to N tokens)."""

    model_config = ConfigDict(extra="forbid")
    prompt: Optional[Union[Text, Ids]] = None
    messages: Optional[list[ChatMessage]] = None
    target: Optional[Union[Text, Ids]] = None
    generate: Optional[int] = Field(default=None, description="number of tokens to generate and attribute")
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
