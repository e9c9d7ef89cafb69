"""Drop-in interface of the published HETA implementation, as a thin adapter over the engine.

Users of the published code change one import::

    from heta_fast.compat import HETA, HETAConfig

``HETA.attribute`` computes with the engine, so its numbers have heta-fast's semantics
(docs/method.md), not the published code's known errors. Two helpers reproduce published
behaviour on purpose, for code that calls them directly: :func:`build_windows` is the published
windowing (the engine windows by heta_fast/windows.py), and :func:`mask_token_embedding` the
published masking of one row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MASK_SCHEMES
from .config import HETAConfig as EngineConfig
from .engine import Attributor
from .engine import resolve_device as _resolve_device
from .errors import ConfigError
from .model.loading import DTYPES


class CompatConfigError(ConfigError, AssertionError):
    """Invalid compat configuration: both a ValueError and an AssertionError (the published
    code validated with ``assert``; callers catch either)."""


@dataclass
class HETAConfig:
    """The published configuration object, mapped onto :class:`heta_fast.HETAConfig`."""

    beta: float = 0.5
    gamma: float = 0.5
    num_hvp_samples: int = 10
    mask_scheme: str = "zero"
    window_size: int = 0
    window_overlap: float = 0.5
    low_rank: int = 0
    layer_subset: int = 0
    use_fisher: bool = False
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _require(isinstance(self.beta, (int, float)) and self.beta >= 0, f"beta must be >= 0, got {self.beta!r}")
        _require(isinstance(self.gamma, (int, float)) and self.gamma >= 0, f"gamma must be >= 0, got {self.gamma!r}")
        _require(isinstance(self.num_hvp_samples, int) and self.num_hvp_samples >= 1,
                 f"num_hvp_samples must be an integer >= 1, got {self.num_hvp_samples!r}")
        _require(self.mask_scheme in MASK_SCHEMES,
                 f"mask_scheme must be one of {MASK_SCHEMES}, got {self.mask_scheme!r}")
        _require(isinstance(self.window_size, int) and self.window_size >= 0,
                 f"window_size must be an integer >= 0, got {self.window_size!r}")
        _require(isinstance(self.window_overlap, (int, float)) and 0 <= self.window_overlap < 1,
                 f"window_overlap must be in [0, 1), got {self.window_overlap!r}")
        _require(isinstance(self.low_rank, int) and self.low_rank >= 0, f"low_rank must be >= 0, got {self.low_rank!r}")
        _require(isinstance(self.layer_subset, int) and self.layer_subset >= 0,
                 f"layer_subset must be >= 0, got {self.layer_subset!r}")
        _require(self.dtype in DTYPES, f"unknown dtype {self.dtype!r}")

    def to_engine(self) -> EngineConfig:
        """The equivalent engine configuration (every published option but ``device`` and ``dtype``,
        which are loading arguments, maps onto an engine field).

        The published estimator is the exact block Hutchinson (num_hvp_samples probes per token);
        low_rank = k > 0 selects the rank-k sketch instead.
        """
        estimator = dict(estimator="sketch", sketch_rank=self.low_rank) if self.low_rank else dict(estimator="exact")
        try:
            return EngineConfig(**estimator, beta=float(self.beta), gamma=float(self.gamma),
                                num_probes=self.num_hvp_samples, mask_scheme=self.mask_scheme,
                                window_size=self.window_size,
                                window_overlap=float(self.window_overlap), layer_subset=self.layer_subset,
                                use_fisher=bool(self.use_fisher))
        except ConfigError as exc:
            raise CompatConfigError(str(exc)) from exc


@dataclass
class AttributionResult:
    """One target's attribution; every tensor is 1-D over the context tokens."""

    scores: torch.Tensor
    semantic_flow: torch.Tensor
    hessian_sensitivity: torch.Tensor
    kl_divergence: torch.Tensor
    tokens: list[str]
    target_token: str
    target_position: int

    def topk(self, k: int = 10) -> list[tuple[str, float]]:
        """The k highest-scoring (token, score) pairs, highest first."""
        k = min(int(k), self.scores.numel())
        values, idx = torch.topk(self.scores.double(), k)
        return [(self.tokens[int(i)], float(v)) for v, i in zip(values, idx)]


class HETA:
    """``HETA(model, tokenizer, config)``: the published entry point over :class:`Attributor`."""

    def __init__(self, model, tokenizer, config: HETAConfig | None = None):
        self.config = config or HETAConfig()
        self._attributor = Attributor(model, tokenizer, self.config.to_engine())
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_pretrained(cls, name: str, config: HETAConfig | None = None) -> "HETA":
        config = config or HETAConfig()
        attributor = Attributor.from_pretrained(name, config.to_engine(), dtype=config.dtype, device=config.device)
        obj = cls.__new__(cls)
        obj.config, obj._attributor = config, attributor
        obj.model, obj.tokenizer = attributor.model, attributor.tokenizer
        return obj

    def attribute(self, text: str, target_pos: int | None = None,
                  target_token_id: int | None = None) -> AttributionResult:
        """Attribute the token at ``target_pos`` of ``text`` (default: its last token) to the tokens before it.

        ``target_token_id`` replaces the token attributed at that position.
        """
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if target_pos is None:
            target_pos = len(ids) - 1
        if target_pos < 0:
            target_pos += len(ids)
        if not 1 <= target_pos < len(ids) + (target_token_id is not None):
            raise CompatConfigError(f"target_pos {target_pos} leaves no context in a text of {len(ids)} tokens")
        target = int(target_token_id) if target_token_id is not None else ids[target_pos]
        res = self._attributor.attribute(ids[:target_pos], [target])

        def row(x):
            return x[0] if x is not None else torch.zeros(len(res.context_tokens))

        return AttributionResult(scores=res.scores[0], semantic_flow=row(res.flow),
                                 hessian_sensitivity=row(res.curvature), kl_divergence=row(res.information),
                                 tokens=res.context_tokens, target_token=res.target_tokens[0],
                                 target_position=int(target_pos))

    def attribute_batch(self, texts: list[str],
                        target_positions: list[int | None] | None = None) -> list[AttributionResult]:
        positions = target_positions if target_positions is not None else [None] * len(texts)
        if len(positions) != len(texts):
            raise CompatConfigError("target_positions must have one entry per text")
        return [self.attribute(t, p) for t, p in zip(texts, positions)]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else cpu."""
    return _resolve_device(name)


def build_windows(seq_len: int, window: int, overlap: float) -> list[tuple[int, int]]:
    """(start, end) windows of ``window`` tokens with stride max(1, int(window·(1−overlap))).

    A single (0, seq_len) window when window <= 0 or window >= seq_len; the last window ends at seq_len.
    """
    if window <= 0 or window >= seq_len:
        return [(0, seq_len)]
    stride = max(1, int(window * (1 - overlap)))
    windows, start = [], 0
    while True:
        end = min(start + window, seq_len)
        windows.append((start, end))
        if end == seq_len:
            return windows
        start += stride


def mask_token_embedding(embeddings: torch.Tensor, token_idx: int, scheme: str = "zero") -> torch.Tensor:
    """A copy of embeddings [1, T, d] with row ``token_idx`` masked.

    zero: the row becomes 0; mean: the row becomes the mean over all T positions of the given tensor.
    """
    if scheme not in ("zero", "mean"):
        raise CompatConfigError(f"mask_token_embedding supports 'zero' and 'mean' (got {scheme!r}); "
                                "'pad'/'unk' need the tokenizer: use HETAConfig(mask_scheme=...)")
    out = embeddings.clone()
    out[:, token_idx] = 0 if scheme == "zero" else embeddings.mean(dim=1)
    return out


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CompatConfigError(message)


__all__ = ["HETA", "HETAConfig", "AttributionResult", "resolve_device", "build_windows", "mask_token_embedding"]


# ----------------------------------------------------------------------------- evaluation metrics
class DSA:
    """Dependent Sentence Attribution, the published interface: ``DSA.evaluate(scores, relevant, distractor)``."""

    @staticmethod
    def evaluate(attribution_scores: torch.Tensor, relevant_indices: list[int], distractor_indices: list[int]) -> float:
        """mass(relevant) − mass(distractor) with scores normalised to sum 1; 0.0 when the total is not positive.

        Token indices should come from character offsets (heta_fast.evaluate.spans), not from
        matching token text against segment text.
        """
        from .evaluate.metrics import dsa

        return dsa(attribution_scores, relevant_indices, distractor_indices)


def f1_alignment(attribution_scores: torch.Tensor, gold_indices: list[int], top_k: int | None = None) -> float:
    """Set F1 of the top-k indices by score against the gold indices (top_k defaults to len(gold))."""
    from .evaluate.metrics import f1_alignment as _f1

    return _f1(attribution_scores, gold_indices, top_k)


__all__ += ["DSA", "f1_alignment"]
