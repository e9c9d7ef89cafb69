"""The Attributor: request -> model adapter (one captured forward) -> signals -> combine -> result."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from .config import HETAConfig
from .errors import HetaError, InputError, NonFiniteError
from .model_adapter import ModelAdapter
from .reference import combine
from .request import TokenizedRequest, tokenize_prompt, tokenize_request
from .result import Attribution, FailedAttribution
from .signals.curvature import curvature
from .signals.flow import flow_gate
from .signals.information import information
from .signals.masking import mask_vectors
from .signals.prefix_cache import PrefixCache


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Attributor:
    """Computes HETA attributions with one loaded model.

    >>> attr = Attributor.from_pretrained("smollm2-135m")
    >>> res = attr.attribute("... Answer: the", target=" leaves")
    """

    def __init__(self, model, tokenizer, config: HETAConfig | None = None, model_name: str | None = None):
        self.config = config or HETAConfig()
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name or getattr(model.config, "_name_or_path", None)
        self.adapter = ModelAdapter(model)

    @classmethod
    def from_pretrained(cls, name: str | None = None, config: HETAConfig | None = None) -> "Attributor":
        """Load a model by alias (default ``smollm2-135m``), .gguf file, folder or hub id."""
        from .models.loading import load_model_and_tokenizer
        from .models.registry import DEFAULT_MODEL

        config = config or HETAConfig()
        name = name or DEFAULT_MODEL
        device = resolve_device(config.device)
        model, tokenizer = load_model_and_tokenizer(name, dtype=config.dtype, device=str(device))
        return cls(model, tokenizer, config, model_name=name)

    # ------------------------------------------------------------------ public entry points
    def attribute(self, prompt, target) -> Attribution:
        """Attribute ``target`` (text or token ids; one or more tokens) to the tokens of ``prompt``."""
        request = tokenize_request(self.tokenizer, prompt, target, self.adapter.max_length,
                                   self.model.config.vocab_size)
        return self._attribute(request)

    def attribute_many(self, requests: Iterable) -> Iterator[Attribution | FailedAttribution]:
        """(prompt, target) pairs -> results in order; a bad request yields a FailedAttribution."""
        for index, item in enumerate(requests):
            try:
                prompt, target = item
                yield self.attribute(prompt, target)
            except (HetaError, TypeError, ValueError) as exc:
                yield FailedAttribution(index=index, prompt=_safe(item, 0), target=_safe(item, 1),
                                        error_type=type(exc).__name__, message=str(exc))

    def generate_and_attribute(self, prompt: str, max_new_tokens: int = 8, **generation_kwargs) -> Attribution:
        """Generate a continuation (greedy unless told otherwise) and attribute every generated token."""
        context = tokenize_prompt(self.tokenizer, prompt, self.model.config.vocab_size)
        ids = context[None].to(self.adapter.device)
        generation_kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      pad_token_id=pad, **generation_kwargs)
        generated = out[0, ids.shape[1]:].cpu()
        if generated.numel() == 0:
            raise InputError("the model generated no tokens (it stopped at once)")
        res = self.attribute(context, generated)
        res.prompt = prompt if isinstance(prompt, str) else None
        return res

    # ------------------------------------------------------------------ pipeline
    def _attribute(self, req: TokenizedRequest) -> Attribution:
        cfg, adapter = self.config, self.adapter
        timings: dict[str, float] = {}
        dev = adapter.device
        embeds = adapter.embed(req.input_ids)  # [n, d]
        positions = req.target_positions.to(dev)
        n_ctx = req.n_context
        comps = set(cfg.components)

        with _phase("forward", timings):
            # One forward on the fused attention path: the targets' log-probs and, for the flow
            # gate, per-layer q, k, row log-sum-exp and value norms. No attention probabilities
            # are materialised.
            # The information term's masked variants continue this pass's keys and values.
            capture = adapter.capture_stream(embeds, positions, record="flow" in comps,
                                             keep_kv="information" in comps)
            orig = capture.log_probs  # [T, V]
            if not torch.isfinite(orig).all():
                raise NonFiniteError("the model produced non-finite log-probabilities for this input")

        flow = curv = info = None
        if "flow" in comps:
            with _phase("flow", timings):
                flow = flow_gate(capture, positions.cpu(), n_ctx).cpu()
        prefix = PrefixCache.from_kv(capture.kv, n_ctx - 1) if capture.kv is not None else None
        del capture
        if "curvature" in comps:
            with _phase("curvature", timings):
                curv = curvature(adapter, embeds, positions.cpu(), req.target_ids, n_ctx, cfg)
        if "information" in comps:
            with _phase("information", timings):
                masks = mask_vectors(cfg.mask_scheme, embeds[:n_ctx], self.model.get_input_embeddings(),
                                     self.tokenizer)
                info = information(adapter, embeds, positions, n_ctx, masks, orig, memory_budget=cfg.memory_budget,
                                   max_batch=cfg.max_batch, window_size=cfg.window_size,
                                   window_overlap=cfg.window_overlap, prefix=prefix).cpu()
        del prefix

        scores = combine(flow, curv, info, cfg.beta, cfg.gamma)
        for name, value in (("scores", scores), ("flow", flow), ("curvature", curv), ("information", info)):
            if value is not None and not torch.isfinite(value).all():
                raise NonFiniteError(f"the {name} of this input are not finite")
        return Attribution(
            scores=scores, flow=flow, curvature=curv, information=info,
            context_tokens=self._pieces(req.context_ids), target_tokens=self._pieces(req.target_ids),
            context_ids=req.context_ids.tolist(), target_ids=req.target_ids.tolist(), prompt=req.prompt,
            method="heta", model=self.model_name, config=cfg.to_dict(), timings=timings,
        )

    def _pieces(self, ids: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]


@contextmanager
def _phase(name: str, timings: dict):
    """Time one pipeline phase into ``timings`` and label it ``heta::<name>`` for torch.profiler."""
    start = time.perf_counter()
    with torch.profiler.record_function(f"heta::{name}"):
        yield
    timings[name] = round(time.perf_counter() - start, 6)


def _safe(item, i):
    try:
        return item[i]
    except Exception:
        return None
