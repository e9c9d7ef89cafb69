"""Attribution results: the scores, their components, the tokens, and (de)serialisation."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .components import COMPONENTS
from .errors import InputError
from .files import atomic_write
from .inputs import is_integer
from .result_format import FORMAT_VERSION, parse_result, read_result


@dataclass
class Attribution:
    """HETA (or baseline) attribution of target tokens to context tokens.

    scores:       [n_target_tokens, n_context] Attr(i -> t); row t is conditioned on the
                  context plus target tokens < t
    flow, curvature, information: same shape, or None when that component was not computed
    context_tokens / target_tokens: decoded text of each token (or word, after aggregation)
    special:      [n_context] bools, the tokenizer's special tokens (BOS, role markers...); None if unknown
    attributed:   [n_context] bools, the context units that get attribution (a chat's template
                  tokens do not by default: their columns are 0); None means all
    sinks:        [n_context] bools, the attention sinks the flow gate found (special tokens and
                  positions above ``sink_threshold`` of the received attention); None without the gate
    messages / segments: a chat request's messages and, per context unit, the index of the
                  message whose content it belongs to (-1: the template's own tokens); None otherwise
    model, model_dtype, device: the model's name, the dtype its weights ran in and its device
    architecture: the model class that ran (e.g. ``LlamaForCausalLM``)
    """

    scores: torch.Tensor
    context_tokens: list[str]
    target_tokens: list[str]
    flow: torch.Tensor | None = None
    curvature: torch.Tensor | None = None
    information: torch.Tensor | None = None
    context_ids: list[int] | None = None
    target_ids: list[int] | None = None
    prompt: str | None = None
    method: str = "heta"
    model: str | None = None
    model_dtype: str | None = None
    device: str | None = None
    architecture: str | None = None
    config: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    unit: str = "tokens"
    special: list[bool] | None = None
    attributed: list[bool] | None = None
    sinks: list[bool] | None = None
    messages: list[dict] | None = None
    segments: list[int] | None = None
    ok: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        t, n = len(self.target_tokens), len(self.context_tokens)
        for name in ("scores",) + COMPONENTS:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (t, n):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({t}, {n})")
        for name in ("special", "attributed", "sinks", "segments"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries, expected {n}")

    def attributed_indices(self) -> list[int]:
        """Indices of the context units that get attribution (all of them unless marked)."""
        if self.attributed is None:
            return list(range(len(self.context_tokens)))
        return [i for i, a in enumerate(self.attributed) if a]

    # ------------------------------------------------------------------ queries
    def row(self, target: int | None = None) -> torch.Tensor:
        """Scores for one target token [n_context], or summed over targets when ``target`` is None."""
        return self.scores.sum(0) if target is None else self.scores[target]

    def topk(self, k: int = 5, target: int | None = None) -> list[tuple[int, str, float]]:
        """The k highest-scoring attributed context units as (index, text, score), highest first
        (a chat's template tokens are not candidates unless they were attributed)."""
        if not is_integer(k) or k < 0:
            raise InputError(f"k must be an integer >= 0, got {k!r}")
        n_targets = len(self.target_tokens)
        if target is not None and not (is_integer(target) and -n_targets <= target < n_targets):
            raise InputError(f"target must be None or a target index in [0, {n_targets}), got {target!r}")
        k, target = int(k), None if target is None else int(target)
        candidates = torch.tensor(self.attributed_indices(), dtype=torch.long)
        row = self.row(target).double()[candidates]
        values, idx = torch.topk(row, min(k, row.numel()))
        return [(int(candidates[i]), self.context_tokens[int(candidates[i])], float(v)) for v, i in zip(values, idx)]

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, unit: str = "words") -> "Attribution":
        """Sum token scores (and components) into words: a word starts at a token beginning with white space."""
        if unit != "words":
            raise InputError(f"unknown aggregation unit {unit!r}; only 'words' is supported")
        groups: list[list[int]] = []
        for i, tok in enumerate(self.context_tokens):
            # A word never spans a special token or two chat segments (message / template).
            boundary = self._mark(self.special, i) or self._mark(self.special, i - 1) or any(
                marks is not None and i > 0 and marks[i] != marks[i - 1] for marks in (self.segments, self.attributed))
            if not groups or tok[:1].isspace() or not tok.strip() or boundary:
                groups.append([i])
            else:
                groups[-1].append(i)
        index = torch.zeros(len(self.context_tokens), dtype=torch.long)
        for g, members in enumerate(groups):
            index[members] = g

        def pool(x):
            if x is None:
                return None
            out = torch.zeros(x.shape[0], len(groups), dtype=x.dtype)
            return out.index_add_(1, index, x)

        words = ["".join(self.context_tokens[i] for i in members) for members in groups]
        return Attribution(
            scores=pool(self.scores), flow=pool(self.flow), curvature=pool(self.curvature),
            information=pool(self.information), context_tokens=words, target_tokens=list(self.target_tokens),
            context_ids=None, target_ids=self.target_ids, prompt=self.prompt, method=self.method,
            model=self.model, model_dtype=self.model_dtype, device=self.device, architecture=self.architecture,
            config=dict(self.config), timings=dict(self.timings), unit="words",
            special=self._pool_marks(self.special, groups), attributed=self._pool_marks(self.attributed, groups),
            # A word holding a sink token is a sink (words follow the text, not the attention).
            sinks=None if self.sinks is None else [any(self.sinks[i] for i in g) for g in groups],
            messages=self.messages,
            segments=None if self.segments is None else [self.segments[g[0]] for g in groups],
        )

    @staticmethod
    def _mark(marks: list[bool] | None, i: int) -> bool:
        return marks is not None and 0 <= i < len(marks) and marks[i]

    @staticmethod
    def _pool_marks(marks: list[bool] | None, groups: list[list[int]]) -> list[bool] | None:
        # Groups never mix special and other tokens, nor attributed and conditioning ones.
        return None if marks is None else [marks[g[0]] for g in groups]

    # ------------------------------------------------------------------ rendering
    def show(self, k: int = 5, file=None, color: bool | None = None) -> None:
        """Print a heatmap of the context and the top-k tokens to the terminal (or ``file``), in
        what it can encode."""
        import sys

        from .render import render_terminal

        file = file if file is not None else sys.stdout
        print(render_terminal(self, k=k, color=color, stream=file), file=file)

    def to_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML heatmap (atomically; ``OutputError`` naming a bad path); returns the path."""
        from .render import render_html

        return atomic_write(path, render_html(self))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        def lst(x):
            return None if x is None else x.double().tolist()

        return {
            "format_version": FORMAT_VERSION, "method": self.method, "model": self.model,
            "model_dtype": self.model_dtype, "device": self.device, "architecture": self.architecture,
            "prompt": self.prompt, "unit": self.unit,
            "context_tokens": self.context_tokens, "target_tokens": self.target_tokens,
            "context_ids": self.context_ids, "target_ids": self.target_ids,
            "scores": lst(self.scores), "flow": lst(self.flow), "curvature": lst(self.curvature),
            "information": lst(self.information), "config": self.config, "timings": self.timings,
            "special": self.special, "attributed": self.attributed, "sinks": self.sinks, "messages": self.messages,
            "segments": self.segments,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the result; also written to ``path`` when given (atomically; ``OutputError``
        naming a bad path)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Attribution":
        """The result of :meth:`to_dict`'s mapping; anything malformed raises ``ResultFormatError``."""
        return cls._build(parse_result(d))

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "Attribution":
        """Read a result written by :meth:`to_json` (a path, or the JSON text itself).

        Every field is checked (format version, types, shapes, finite numbers); any failure,
        including an unreadable file, raises ``ResultFormatError`` naming the file and the problem.
        """
        return cls._build(read_result(path_or_text))

    @classmethod
    def _build(cls, fields: dict) -> "Attribution":
        for name in ("scores",) + COMPONENTS:
            if fields[name] is not None:
                fields[name] = torch.tensor(fields[name], dtype=torch.float64)
        return cls(**fields)


@dataclass
class FailedAttribution:
    """The result slot of a request that could not be attributed (``attribute_many``): the
    request's prompt, target and chat messages as given (None when it gave none), the error."""

    index: int
    prompt: object
    target: object
    error_type: str
    message: str
    messages: object = None
    ok: bool = field(default=False, init=False)

    def __str__(self) -> str:
        return f"request {self.index} failed: {self.error_type}: {self.message}"
