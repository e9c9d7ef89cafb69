"""Checking a request before it is queued: sizes (413), engine options and inputs (422).

The request's prompt and target are tokenised here with the API's own copy of the tokenizer
(the worker's is never touched from another thread), by the engine's rules, so a request the
engine would refuse is refused at once with a one-line message instead of becoming a failed job.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

from ..config import HETAConfig
from ..errors import ConfigError, HetaError, InputError
from ..request import tokenize_prompt, tokenize_request
from .schema import AttributionRequest
from .settings import ServiceSettings


class RequestError(Exception):
    """A client error: HTTP ``status`` and a one-line ``detail`` naming the field."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, " ".join(detail.split())


@dataclass(frozen=True)
class Admitted:
    """What the worker runs: prompt (text or ids [n]), target (text or ids) or generate (N), config."""

    prompt: object
    target: object
    generate: int | None
    config: HETAConfig


class Admission:
    """Checks requests against one Attributor's model (its vocabulary and maximum length)."""

    def __init__(self, attributor, settings: ServiceSettings):
        self.settings = settings
        self.base = attributor.config
        self.n_layers = len(attributor.adapter.layers)
        self.max_length = attributor.adapter.max_length
        self.vocab_size = attributor.model.config.vocab_size
        self.tokenizer = copy.deepcopy(attributor.tokenizer)
        self._lock = threading.Lock()

    def admit(self, body: AttributionRequest) -> Admitted:
        config = self._config(body)
        if (body.prompt is None) == (body.messages is None):
            raise RequestError(422, "prompt: give exactly one of 'prompt' and 'messages'")
        if (body.target is None) == (body.generate is None):
            raise RequestError(422, "target: give exactly one of 'target' and 'generate'")
        self._check_size("prompt", body.prompt)
        self._check_size("target", body.target)
        if body.generate is not None and not 1 <= body.generate <= self.settings.max_generate:
            raise RequestError(422, f"generate: must be an integer in [1, {self.settings.max_generate}]")
        with self._lock:
            prompt = body.prompt if body.messages is None else self._chat(body.messages)
            try:
                if body.generate is None:
                    tokenize_request(self.tokenizer, prompt, body.target, self.max_length, self.vocab_size)
                else:
                    self._check_generate(prompt, body.generate)
            except (HetaError, ValueError, TypeError, OverflowError, RuntimeError) as exc:  # all about the input
                raise RequestError(422, f"{'messages' if body.messages else 'prompt/target'}: {exc}") from None
        return Admitted(prompt, body.target, body.generate, config)

    def _config(self, body: AttributionRequest) -> HETAConfig:
        changes = body.options.changes() if body.options is not None else {}
        try:
            return self.base.replace(**changes).check_for_model(self.n_layers)
        except (ConfigError, TypeError, ValueError, OverflowError) as exc:
            raise RequestError(422, f"options: {exc}") from None

    def _check_size(self, field: str, value) -> None:
        if isinstance(value, str) and len(value) > self.settings.max_prompt_chars:
            raise RequestError(413, f"{field}: {len(value)} characters; the limit is {self.settings.max_prompt_chars}")
        if isinstance(value, list) and len(value) > self.settings.max_prompt_ids:
            raise RequestError(413, f"{field}: {len(value)} token ids; the limit is {self.settings.max_prompt_ids}")

    def _chat(self, messages) -> list[int]:
        """The chat rendered by the model's template (generation prompt added) -> ids."""
        chars = sum(len(m.content) for m in messages)
        if chars > self.settings.max_prompt_chars:
            raise RequestError(413, f"messages: {chars} characters; the limit is {self.settings.max_prompt_chars}")
        if not messages:
            raise RequestError(422, "messages: must hold at least one message")
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(422, "messages: this model's tokenizer has no chat template; send 'prompt'")
        try:
            text = self.tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                                      add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception as exc:  # templates are user-level Jinja: any failure is the request's
            raise RequestError(422, f"messages: the chat template refused them: {exc}") from None

    def _check_generate(self, prompt, n: int) -> None:
        context = tokenize_prompt(self.tokenizer, prompt, self.vocab_size)
        if self.max_length is not None and context.numel() + n > self.max_length:
            raise InputError(f"prompt ({context.numel()} tokens) + generate ({n}) exceed the model's maximum "
                             f"of {self.max_length}")
