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
from ..errors import ConfigError, HetaError
from ..inputs import check_max_new_tokens
from ..request import check_option_tokens, sink_token_id, tokenize_context, tokenize_request
from .schema import AttributionRequest
from .settings import ServiceSettings


class RequestError(Exception):
    """A client error: HTTP ``status`` and a one-line ``detail`` naming the field."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, " ".join(detail.split())


@dataclass(frozen=True)
class Admitted:
    """What the worker runs: prompt (text or ids [n]) or chat messages, target (text or ids) or
    generate (N), config."""

    prompt: object
    target: object
    generate: int | None
    config: HETAConfig
    messages: list[dict] | None = None


class Admission:
    """Checks requests against one Attributor's model (its vocabulary and maximum length)."""

    def __init__(self, attributor, settings: ServiceSettings):
        self.settings = settings
        self.base = attributor.config
        self.n_layers = len(attributor.adapter.layers)
        self.max_length = attributor.adapter.max_length
        self.vocab_size = attributor.adapter.vocab_size
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
        messages = None if body.messages is None else self._messages(body.messages)
        with self._lock:
            try:
                if body.generate is None:
                    tokenize_request(self.tokenizer, body.prompt, body.target, self.max_length, self.vocab_size,
                                     messages, sink_token_id(self.tokenizer, config.sink_token))
                else:
                    self._check_generate(body.prompt, messages, body.generate, config)
            except (HetaError, ValueError, TypeError, OverflowError, RuntimeError) as exc:  # all about the input
                # ``is not None``: an empty list of messages is still the field the request gave.
                raise RequestError(422, f"{'messages' if messages is not None else 'prompt/target'}: {exc}") from None
        return Admitted(body.prompt, body.target, body.generate, config, messages)

    def _config(self, body: AttributionRequest) -> HETAConfig:
        changes = body.options.changes() if body.options is not None else {}
        try:
            config = self.base.replace(**changes).check_for_model(self.n_layers)
            # The engine's own check of the special tokens the options name (mask scheme, sink
            # token): refused here in one 422 rather than as a failed job.
            check_option_tokens(self.tokenizer, config, self.vocab_size)
            return config
        except (ConfigError, TypeError, ValueError, OverflowError) as exc:
            raise RequestError(422, f"options: {exc}") from None

    def _check_size(self, field: str, value) -> None:
        if isinstance(value, str) and len(value) > self.settings.max_prompt_chars:
            raise RequestError(413, f"{field}: {len(value)} characters; the limit is {self.settings.max_prompt_chars}")
        if isinstance(value, list) and len(value) > self.settings.max_prompt_ids:
            raise RequestError(413, f"{field}: {len(value)} token ids; the limit is {self.settings.max_prompt_ids}")

    def _messages(self, messages) -> list[dict]:
        """The request's chat messages as the engine takes them (rendered and marked there, by
        the model's template: heta_fast/chat.py), within the size limit."""
        chars = sum(len(m.content) for m in messages)
        if chars > self.settings.max_prompt_chars:
            raise RequestError(413, f"messages: {chars} characters; the limit is {self.settings.max_prompt_chars}")
        return [m.model_dump() for m in messages]

    def _check_generate(self, prompt, messages, n: int, config: HETAConfig) -> None:
        # The engine's own rule for generate_and_attribute's budget (heta_fast.inputs).
        context = tokenize_context(self.tokenizer, prompt, self.vocab_size, messages,
                                   sink_token_id(self.tokenizer, config.sink_token))
        check_max_new_tokens(n, context.n_context, self.max_length)
