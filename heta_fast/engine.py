"""The Attributor: request -> model layer (one captured forward) -> signals -> combine -> result."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from .chat import attributed_mask
from .combine import combine, unattributed_to_zero
from .config import HETAConfig, as_config
from .errors import HetaError, InputError, NonFiniteError
from .inputs import check_max_new_tokens, check_token_count, describe, request_fields, request_items
from .model.adapter import ModelAdapter
from .model.capture import CaptureRequest
from .model.exclusive import holding_the_model
from .precision import stage_precision
from .progress import PhaseEstimate, PhaseReporter, Progress, checked_progress
from .request import (
    TokenizedRequest,
    check_option_tokens,
    sink_token_id,
    tokenize_context,
    tokenize_request,
    with_target,
)
from .result import Attribution, FailedAttribution
from .signals import SIGNALS, SignalContext


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is parsed by torch.device
    (``ConfigError`` for a name it does not know; whether the machine has it is checked on loading)."""
    from .model.loading import parse_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parse_device(name)


class Attributor:
    """Computes HETA attributions with one loaded model.

    >>> attr = Attributor.from_pretrained("smollm2-135m")
    >>> res = attr.attribute("... Answer: the", target=" leaves")

    A model given to the Attributor is switched to heta's eager attention, put in eval mode and
    its parameters stop requiring gradients (docs/method.md, "The model layer"); :meth:`close`,
    or leaving a ``with Attributor(...) as attr:`` block, gives it back as it was.

    Threads may share an Attributor: its attributions take the model's lock and run one at a
    time on it, each with its own numbers (heta_fast/model/exclusive.py).
    """

    def __init__(self, model, tokenizer, config: HETAConfig | None = None, model_name: str | None = None):
        self.config = config or HETAConfig()
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name or getattr(model.config, "_name_or_path", None)
        self.adapter = ModelAdapter(model)
        # State the signals keep across calls (CUDA graphs and the like), one dict per signal.
        self.signal_cache: dict = {}

    @classmethod
    def from_pretrained(cls, name: str | None = None, config: HETAConfig | None = None, *,
                        dtype: str = "float32", device: str = "auto") -> "Attributor":
        """Load a model by alias (default ``smollm2-135m``), .gguf file, folder or hub id.

        dtype: "float32", "float64", "float16" or "bfloat16", the dtype the weights are loaded in;
        device: "auto" (CUDA when available, else the CPU) or a torch device string.
        """
        from .model.loading import check_device, check_load_args, load_model_and_tokenizer

        name, dtype = check_load_args(name, dtype, config)
        device = str(check_device(resolve_device(device)))
        model, tokenizer = load_model_and_tokenizer(name, dtype=dtype, device=device)
        return cls(model, tokenizer, config, model_name=name)

    @holding_the_model
    def close(self) -> None:
        """Give the model back as it was given (attention implementation, mode, requires_grad); waits
        for an attribution another thread is running on it."""
        self.adapter.restore()

    def __enter__(self) -> "Attributor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ public entry points
    def attribute(self, prompt=None, target=None, config: HETAConfig | None = None,
                  progress: Progress | None = None, *, messages=None) -> Attribution:
        """Attribute ``target`` (text or token ids; one or more tokens) to the tokens of ``prompt``
        (text or token ids) or of chat ``messages`` (``[{"role": ..., "content": ...}, ...]``,
        rendered by the model's chat template with the generation prompt; heta_fast/chat.py).

        config: this call's configuration (default: the Attributor's); progress: a callback
        receiving :class:`~heta_fast.progress.ProgressEvent` s as the phases advance.
        """
        config, progress = self._call_config(config), checked_progress(progress)
        request = tokenize_request(self.tokenizer, prompt, target, self.adapter.max_length,
                                   self.adapter.vocab_size, messages, self.sink_id(config))
        return self._attribute(request, config, progress)

    def attribute_many(self, requests: Iterable, config: HETAConfig | None = None, *,
                       batching: str = "auto") -> Iterator[Attribution | FailedAttribution]:
        """Requests -> results in order; a bad request yields a FailedAttribution, the rest go on.

        A request is a ``(prompt, target)`` pair or a mapping ``{"prompt": ..., "target": ...}``
        or ``{"messages": [...], "target": ...}`` (``heta_fast.inputs``); a bad config or a
        ``requests`` that is not an iterable of requests raises here, before any request is read.
        The requests go through the cross-request scheduler (heta_fast/scheduler.py), which reads
        a few dozen ahead to group similar ones; ``batching`` ("auto", "on", "off") says whether a
        group shares its model passes (auto: on CUDA only).
        """
        from .scheduler import Scheduler

        cfg = self._call_config(config)
        scheduler = Scheduler(self, batching=batching)  # refuses an unknown batching mode now
        return (result for _, result in scheduler.run(self._jobs(request_items(requests), cfg)))

    @staticmethod
    def _jobs(requests: Iterable, config: HETAConfig):
        from .scheduler import Job

        for index, item in enumerate(requests):
            try:
                prompt, target, messages = request_fields(item)
            except HetaError as exc:  # a malformed item is its own failure row
                yield Job(index, None, None, config, error=exc)
                continue
            yield Job(index, prompt, target, config, messages=messages)

    def generate_and_attribute(self, prompt=None, max_new_tokens: int = 8, config: HETAConfig | None = None,
                               progress: Progress | None = None, *, messages=None,
                               **generation_kwargs) -> Attribution:
        """Generate a continuation of ``prompt`` or of chat ``messages`` (greedy unless told
        otherwise) and attribute every generated token.

        max_new_tokens: an integer >= 1 such that prompt + max_new_tokens fits the model (checked
        before generating); generation arguments transformers refuses raise ``InputError``.
        """
        config, progress = self._call_config(config), checked_progress(progress)
        context = tokenize_context(self.tokenizer, prompt, self.adapter.vocab_size, messages, self.sink_id(config))
        max_new_tokens = check_max_new_tokens(max_new_tokens, context.n_context, self.adapter.max_length)
        ids = context.context_ids[None].to(self.adapter.device)
        user_kwargs = sorted(generation_kwargs)
        generation_kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad(), self.adapter.lock:
            try:
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                          pad_token_id=pad, **generation_kwargs)
            except Exception as exc:  # with the caller's generation arguments transformers fails in many ways
                if not user_kwargs:
                    raise
                raise InputError(f"generation arguments {user_kwargs} refused: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())}") from exc
        # Arguments such as return_dict_in_generate give an output object, num_return_sequences several rows:
        # one answer is attributed, so anything but one sequence is refused rather than cut to its first.
        sequences = getattr(out, "sequences", out)
        if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2 or sequences.shape[0] != 1:
            raise InputError(f"generation arguments {user_kwargs} must give one sequence to attribute; got "
                             f"{describe(sequences)}")
        generated = sequences[0, ids.shape[1]:].cpu()
        if generated.numel() == 0:
            raise InputError("the model generated no tokens (it stopped at once)")
        return self._attribute(with_target(context, generated, self.adapter.max_length), config, progress)

    def estimate(self, prompt=None, target=None, config: HETAConfig | None = None, *,
                 messages=None) -> list[PhaseEstimate]:
        """The work ``attribute(prompt, target, config, messages=messages)`` will do, per phase,
        before any of it runs.

        Also checks the request and the memory budget (the same typed errors as ``attribute``).
        """
        cfg = self._call_config(config)
        request = tokenize_request(self.tokenizer, prompt, target, self.adapter.max_length,
                                   self.adapter.vocab_size, messages, self.sink_id(cfg))
        return [PhaseEstimate("forward", 1, "pass", passes=1)] + [
            SIGNALS[name].estimate(self.adapter, request, cfg) for name in cfg.components]

    def _call_config(self, config) -> HETAConfig:
        """This call's config (default: the Attributor's), checked against the model before any work:
        its layers, and the special tokens its mask scheme and sink token use (a ConfigError now
        for one the tokenizer lacks or the model has no embedding for; heta_fast/request.py)."""
        cfg = as_config(config, self.config).check_for_model(len(self.adapter.layers))
        check_option_tokens(self.tokenizer, cfg, self.adapter.vocab_size)
        return cfg

    def sink_id(self, config: HETAConfig) -> int | None:
        """The token id ``config.sink_token`` puts before every context, or None (heta_fast/request.py)."""
        return sink_token_id(self.tokenizer, config.sink_token, self.adapter.vocab_size)

    def _check_budget(self, req: TokenizedRequest, cfg: HETAConfig) -> None:
        """Raise now, before any model pass, the MemoryBudgetError a signal would raise after the
        forward pass: each signal's own check (``Signal.check_budget``), in the order they run."""
        for name in cfg.components:
            SIGNALS[name].check_budget(self.adapter, req, cfg, self.signal_cache.setdefault(name, {}))

    # ------------------------------------------------------------------ pipeline
    def attribute_group(self, requests: list[TokenizedRequest], config: HETAConfig | None = None,
                        progress: list[Progress | None] | None = None, *,
                        batched: bool = False) -> list[Attribution | FailedAttribution]:
        """Attribute several tokenised requests under one config (the scheduler's unit of work).

        Returns one result per request, in order; a request that fails (a typed error of its own:
        non-finite output, over the memory budget) yields a FailedAttribution and the others go on.

        batched=False: one after another, each exactly as :meth:`attribute` would (bit for bit).
        batched=True: the model passes are shared between the requests (:meth:`_attribute_batched`:
        one capture forward, each signal's :meth:`compute_group`), each request's numbers equal
        to attributing it alone up to float rounding; its ``timings`` are the group's phase times
        divided evenly among the group. On the CPU sharing passes saves ~4 % of a record at best
        (every pass is compute-bound already; BENCHMARKS.md, "Pipeline"); it is for devices
        that one request leaves idle. If the shared passes raise a typed error (one request over
        the memory budget, say), the group is attributed one request at a time instead, so the
        error stays that request's.
        """
        cfg = self._call_config(config)
        progress = progress or [None] * len(requests)
        if batched and len(requests) > 1:
            try:
                return self._attribute_batched(requests, cfg, progress)
            except HetaError:
                pass  # one by one below: a request's own error becomes its own failure row
        out: list[Attribution | FailedAttribution] = []
        for index, (request, report) in enumerate(zip(requests, progress)):
            try:
                out.append(self._attribute(request, cfg, report))
            except HetaError as exc:
                out.append(_failure(index, request, exc))
        return out

    @holding_the_model
    def _attribute(self, req: TokenizedRequest, cfg: HETAConfig, progress: Progress | None = None) -> Attribution:
        self._check_budget(req, cfg)
        adapter, timings = self.adapter, {}
        signals = [SIGNALS[name] for name in cfg.components]
        needs = [s.capture_request(adapter, cfg) for s in signals]
        embeds = adapter.embed(req.input_ids)  # [n, d]
        positions = req.target_positions.to(adapter.device)
        with _phase("forward", timings), stage_precision(cfg.precision, "forward", adapter):
            forward = PhaseReporter(progress, "forward", 1, "pass")
            capture = adapter.capture(embeds, positions, CaptureRequest.union(needs))
            forward.finish()
            _check_finite(capture)
        context = self._context(req, cfg, embeds, positions, capture, progress)
        parts = dict.fromkeys(SIGNALS)
        for i, signal in enumerate(signals):
            with _phase(signal.name, timings), stage_precision(cfg.precision, signal.precision_stage, adapter):
                parts[signal.name] = signal.compute(context)
            capture.release(CaptureRequest.union(needs[i + 1:]))
        return self._result(context, parts, timings)

    @holding_the_model
    def _attribute_batched(self, requests: list[TokenizedRequest], cfg: HETAConfig,
                           progress: list[Progress | None]) -> list[Attribution | FailedAttribution]:
        """The requests through shared passes: one capture forward of all of them (right-padded),
        then each signal's ``compute_group`` over the requests whose capture is finite. A request
        over the memory budget raises before any pass (attribute_group then goes one by one)."""
        for req in requests:
            self._check_budget(req, cfg)
        adapter, timings = self.adapter, {}
        signals = [SIGNALS[name] for name in cfg.components]
        needs = [s.capture_request(adapter, cfg) for s in signals]
        embeds = [adapter.embed(req.input_ids) for req in requests]
        positions = [req.target_positions.to(adapter.device) for req in requests]
        with _phase("forward", timings), stage_precision(cfg.precision, "forward", adapter):
            reporters = [PhaseReporter(report, "forward", 1, "pass") for report in progress]
            captures = adapter.capture_group(embeds, positions, CaptureRequest.union(needs))
            for reporter in reporters:
                reporter.finish()
        out: list[Attribution | FailedAttribution | None] = [None] * len(requests)
        contexts: dict[int, SignalContext] = {}
        for i, capture in enumerate(captures):
            try:
                _check_finite(capture)
                contexts[i] = self._context(requests[i], cfg, embeds[i], positions[i], capture, progress[i])
            except HetaError as exc:
                out[i] = _failure(i, requests[i], exc)
        parts = {i: dict.fromkeys(SIGNALS) for i in contexts}
        for k, signal in enumerate(signals):
            with _phase(signal.name, timings), stage_precision(cfg.precision, signal.precision_stage, adapter):
                values = signal.compute_group(list(contexts.values()))
            for i, value in zip(contexts, values):
                parts[i][signal.name] = value
                contexts[i].capture.release(CaptureRequest.union(needs[k + 1:]))
        share = {name: round(t / len(requests), 6) for name, t in timings.items()}
        for i, context in contexts.items():
            try:
                out[i] = self._result(context, parts[i], dict(share))
            except HetaError as exc:
                out[i] = _failure(i, requests[i], exc)
        return out

    def _context(self, req: TokenizedRequest, cfg: HETAConfig, embeds: torch.Tensor, positions: torch.Tensor,
                 capture, progress: Progress | None) -> SignalContext:
        return SignalContext(model=self.adapter, tokenizer=self.tokenizer, request=req, embeds=embeds,
                             positions=positions, capture=capture, config=cfg, cache=self.signal_cache,
                             progress=progress)

    def _result(self, context: SignalContext, parts: dict, timings: dict) -> Attribution:
        """Combine one request's components into its Attribution (NonFiniteError if any is not finite)."""
        req, cfg, adapter = context.request, context.config, self.adapter
        attributed = attributed_mask(req.segments, req.n_context, cfg.template_tokens)
        parts = {name: unattributed_to_zero(value, attributed) for name, value in parts.items()}
        scores = combine(parts["flow"], parts["curvature"], parts["information"], cfg.beta, cfg.gamma,
                         cfg.term_scale, attributed)
        for name, value in (*parts.items(), ("scores", scores)):
            if value is not None and not torch.isfinite(value).all():
                if name == "scores":  # finite components, non-finite scores: the weights overflowed
                    raise NonFiniteError(f"the scores are not finite with beta={cfg.beta:g} and gamma={cfg.gamma:g} "
                                         "(the components are finite)")
                raise NonFiniteError(f"the {name} of this input are not finite")
        return Attribution(
            scores=scores, **parts,
            context_tokens=self.pieces(req.context_ids), target_tokens=self.pieces(req.target_ids),
            context_ids=req.context_ids.tolist(), target_ids=req.target_ids.tolist(), prompt=req.prompt,
            special=_as_list(req.special), segments=_as_list(req.segments), attributed=attributed.tolist(),
            sinks=_as_list(context.marks.get("sinks")),
            messages=None if req.messages is None else [dict(m) for m in req.messages],
            method="heta", model=self.model_name, model_dtype=adapter.dtype_name,
            device=str(adapter.device), architecture=type(self.model).__name__, config=cfg.to_dict(), timings=timings,
        )

    def pieces(self, ids: torch.Tensor) -> list[str]:
        """Each token id [n] as its own text: how a result records its tokens."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # ------------------------------------------------------------------ data sets (heta_fast/pipeline)
    def attribute_dataset(self, records, config: HETAConfig | None = None, *, id_field: str = "id",
                          prompt_field: str = "prompt", target_field: str = "target",
                          messages_field: str | None = None, generate: int | None = None
                          ) -> Iterator[tuple[object, Attribution | FailedAttribution]]:
        """(id, result) per record, in input order: ``records`` is any iterable of dicts, a pandas
        DataFrame or a ``datasets.Dataset``; the id is the record's ``id_field`` (its position when
        absent). ``messages_field``: read chat messages from that field instead of a prompt.
        ``generate=N``: attribute the greedy continuation of up to N tokens instead of a target.
        Bad records yield FailedAttribution; a bad config, ``generate`` or ``records`` (text, a
        single record, a number) raises here, before any record is read. Write the results with
        ``heta_fast.io.write_results``.
        """
        from .pipeline.readers import Fields

        cfg = self._call_config(config)
        if generate is not None:
            generate = check_token_count(generate, "generate")
        records = request_items(records, "attribute_dataset", "records (dicts), a DataFrame or a datasets.Dataset")
        fields = Fields(id=id_field, prompt=prompt_field, target=None if generate else target_field,
                        messages=messages_field)
        return self._dataset_results(records, fields, cfg, generate)

    def _dataset_results(self, records, fields, config: HETAConfig, generate: int | None):
        from .pipeline.run import attribute_records

        for position, record, result in attribute_records(self, records, fields, config, generate):
            yield (record.get(fields.id, position) if isinstance(record, dict) else position), result


def _check_finite(capture) -> None:
    if not torch.isfinite(capture.log_probs).all():
        raise NonFiniteError("the model produced non-finite log-probabilities for this input")


def _failure(index: int, request: TokenizedRequest, exc: HetaError) -> FailedAttribution:
    return FailedAttribution(index=index, prompt=request.prompt, target=None, error_type=type(exc).__name__,
                             message=str(exc))


def _as_list(x: torch.Tensor | None) -> list | None:
    return None if x is None else x.tolist()


@contextmanager
def _phase(name: str, timings: dict):
    """Time one pipeline phase into ``timings`` and label it ``heta::<name>`` for torch.profiler."""
    start = time.perf_counter()
    with torch.profiler.record_function(f"heta::{name}"):
        yield
    timings[name] = round(time.perf_counter() - start, 6)
