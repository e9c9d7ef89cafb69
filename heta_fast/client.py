"""A Python client of ``heta-fast serve``, shaped like the Attributor (standard library only).

>>> attr = Client("http://127.0.0.1:8000/")          # instead of Attributor.from_pretrained(...)
>>> res = attr.attribute("The capital of France is", target=" Paris")   # an Attribution

``submit`` queues a job and returns its id; ``result(id)`` waits for it (the service answers
when the job finishes: ``?wait=``, no polling) and returns the Attribution; ``cancel(id)``
cancels it. A job that fails raises the typed error it failed with
(``InputError``, ``ConfigError``, ... by name; else :class:`ServiceError`); a request refused as
invalid (413/422) raises ``ConfigError`` (bad options) or ``InputError``, as in-process; any other
HTTP error raises :class:`ServiceError` with the status and the service's one-line message.
"""
from __future__ import annotations

import http.client
import json
import numbers
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from . import errors
from .errors import ConfigError, HetaError, InputError, QueueFullError, ServiceError
from .inputs import describe
from .result import Attribution

TERMINAL = ("done", "failed", "cancelled")
LONG_WAIT = 30.0  # seconds one HTTP call asks the service to wait for a job (then it asks again)
# Fields of HETAConfig a request may set (the service's ``options``); memory_budget, max_batch and
# cuda_graphs belong to the server (they change how the work is chunked, not the numbers).
OPTION_FIELDS = ("beta", "gamma", "components", "estimator", "num_probes", "probing_patterns", "probing_repeats",
                 "sketch_rank", "seed", "mask_scheme", "information_estimator", "information_rank",
                 "information_span", "window_size", "window_overlap", "layer_subset", "use_fisher", "template_tokens",
                 "term_scale", "sinks", "sink_threshold", "sink_token", "precision")


# The keys every job view the service answers with holds (docs/service.md).
JOB_VIEW = ("id", "status")


class Client:
    """url: the service's base address; token: its bearer token; timeout: seconds per HTTP call."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        self.url = _base_url(url)
        self.token, self.timeout = token, timeout

    # ------------------------------------------------------------------ the Attributor's calls
    def attribute(self, prompt=None, target=None, config=None, *, messages: list | None = None,
                  timeout: float | None = None, **options) -> Attribution:
        """Attribute ``target`` (text or ids) to ``prompt`` (text or ids) or to chat ``messages``;
        ``config``: a HETAConfig or a dict of options (``options`` keywords add to it). Waits for
        the result."""
        return self._run(_body(prompt, target, None, messages, config, options), timeout)

    def generate_and_attribute(self, prompt=None, max_new_tokens: int = 8, config=None, *,
                               messages: list | None = None, timeout: float | None = None,
                               **options) -> Attribution:
        """Attribute the service's greedy continuation of ``prompt`` or chat ``messages``, up to
        ``max_new_tokens`` tokens."""
        return self._run(_body(prompt, None, max_new_tokens, messages, config, options), timeout)

    # ------------------------------------------------------------------ jobs
    def submit(self, prompt=None, target=None, *, generate: int | None = None, messages: list | None = None,
               config=None, **options) -> str:
        """Queue one request; returns the job id. ``messages``: chat messages instead of a prompt."""
        return self._call("POST", "v1/attributions", _body(prompt, target, generate, messages, config, options),
                          needs=JOB_VIEW)["id"]

    def status(self, job_id: str, wait: float = 0.0) -> dict:
        """The job's state: status, phase, progress, error, result (``GET /v1/attributions/{id}``);
        ``wait``: seconds the service may wait for the job to finish before it answers."""
        query = f"?wait={wait:g}" if wait > 0 else ""
        return self._call("GET", f"v1/attributions/{urllib.parse.quote(job_id, safe='')}{query}", needs=JOB_VIEW)

    def result(self, job_id: str, timeout: float | None = None) -> Attribution:
        """Wait for the job (at most ``timeout`` seconds; None: as long as it takes) and return its result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._outcome(self.status(job_id, self._wait(deadline)), deadline, timeout)

    def _run(self, body: dict, timeout: float | None) -> Attribution:
        """POST and wait: one round trip when the job finishes within the first wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view = self._call("POST", f"v1/attributions?wait={self._wait(deadline):g}", body, needs=JOB_VIEW)
        return self._outcome(view, deadline, timeout)

    def _wait(self, deadline: float | None) -> float:
        """How long one call may ask the service to wait: below this client's HTTP timeout."""
        wait = min(LONG_WAIT, 0.5 * self.timeout)
        return max(0.0, wait if deadline is None else min(wait, deadline - time.monotonic()))

    def _outcome(self, view: dict, deadline: float | None, timeout: float | None) -> Attribution:
        """Wait on until ``view``'s job is finished (or the deadline), then its Attribution or its error."""
        while view["status"] not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise ServiceError(f"job {view['id']} not finished after {timeout} s (status {view['status']})")
            view = self.status(view["id"], self._wait(deadline))
        if view["status"] == "done":
            if not isinstance(view.get("result"), dict):
                raise ServiceError(f"job {view['id']} is done but its answer holds no result")
            return Attribution.from_dict(view["result"])
        error = view.get("error")
        error = error if isinstance(error, dict) else {}
        kind_name, message = str(error.get("type", "ServiceError")), str(error.get("message", view["status"]))
        kind = getattr(errors, kind_name, None)
        if isinstance(kind, type) and issubclass(kind, HetaError) and kind not in (ServiceError, QueueFullError):
            raise kind(message)
        raise ServiceError(f"{kind_name}: {message}")

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job; returns its state."""
        return self._call("DELETE", f"v1/attributions/{urllib.parse.quote(job_id, safe='')}", needs=JOB_VIEW)

    def models(self) -> list[dict]:
        """What the service has loaded (name, architecture, dtype, device, max context, config)."""
        return self._call("GET", "v1/models", needs=("models",))["models"]

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, body: dict | None = None, needs: tuple[str, ...] = ()) -> dict:
        """The service's JSON object answering ``method path`` (with ``body``), holding the keys ``needs``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            raise _refused(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # HTTPException: not HTTP
            raise ServiceError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None
        except ValueError as exc:  # an address urllib cannot send (http.client.InvalidURL)
            raise ServiceError(f"cannot reach {request.full_url}: {exc}") from None
        return _json_object(answer, request.full_url, needs)


def _refused(exc: urllib.error.HTTPError) -> HetaError:
    """An HTTP error answer as the typed error it stands for (413/422: the request's own fault, the
    in-process error type; else ServiceError with the status and the service's one line)."""
    try:
        detail = json.loads(exc.read()).get("detail", exc.reason)
    except (ValueError, AttributeError):
        detail = exc.reason
    if exc.code in (413, 422):
        return (ConfigError if str(detail).startswith("options") else InputError)(str(detail))
    retry = exc.headers.get("Retry-After") if exc.headers else None
    return ServiceError(f"{exc.code}: {detail}", exc.code, float(retry) if retry else None)


def _json_object(answer: bytes, url: str, needs: tuple[str, ...] = ()) -> dict:
    """A successful answer's JSON object holding the keys ``needs``; anything else is not heta-fast
    serve answering (a ServiceError)."""
    try:
        value = json.loads(answer)
    except ValueError:  # not JSON (JSONDecodeError), or not text (UnicodeDecodeError)
        value = None
    if not isinstance(value, dict):
        raise ServiceError(f"{url}: the answer is not a JSON object (is this address a heta-fast service?)")
    missing = [key for key in needs if key not in value]
    if missing:
        raise ServiceError(f"{url}: the answer has no {missing[0]!r} (is this address a heta-fast service?)")
    return value


def _base_url(url) -> str:
    """The service's base address (ending in "/"), checked: http or https, a host, a port in range,
    no query or fragment (the API's paths are appended to it). Anything else is a ConfigError."""
    if not isinstance(url, str):
        raise ConfigError(f"url must be text (http://host:port/), got {describe(url)}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # reading it checks it (ValueError: not a number, or beyond 0-65535)
    except ValueError as exc:
        raise ConfigError(f"url {url!r} is malformed: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"url must be an http:// or https:// address with a host (no query or fragment), got {url!r}")
    return url if url.endswith("/") else url + "/"


def _body(prompt, target, generate, messages, config, options) -> dict:
    """The JSON body of ``POST /v1/attributions`` (fields left out when not given)."""
    body = {"prompt": _plain(prompt, "prompt"), "messages": messages, "target": _plain(target, "target"),
            "generate": generate,
            "options": _options(config, options) or None}
    return {k: v for k, v in body.items() if v is not None}


def _options(config, extra: dict) -> dict:
    """A HETAConfig or a dict -> the request's ``options`` (only fields a request may set)."""
    if config is None:
        fields = {}
    elif isinstance(config, dict):
        fields = dict(config)
    else:
        fields = {k: v for k, v in config.to_dict().items() if k in OPTION_FIELDS}
    fields.update(extra)
    return {name: _option(name, value) for name, value in fields.items()}


def _option(name: str, value):
    """One option's value as JSON carries it. A NumPy number (np.int64, np.float32), which HETAConfig
    takes as the Python number it holds, becomes that number, so that the service sees what the
    library would; a value JSON cannot carry (a NumPy bool, a tensor, an object: the library refuses
    them too) is a ConfigError here."""
    if isinstance(value, numbers.Number) and hasattr(value, "item"):
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise ConfigError(f"options: {name} cannot be sent to the service: {describe(value)}") from None
    return value


def _plain(value, name: str):
    """Text, or token ids as JSON: a tensor, an array or any sequence (a range) as a list whose
    elements stay as they are (a bool stays a bool, a float a float; NumPy scalars become Python
    ones), so that the service refuses what the library refuses instead of ids converted here.
    Anything else (bytes, a number, a mapping) is refused here as the library refuses it."""
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [v.item() if hasattr(v, "item") else v for v in value]
    raise InputError(f"{name} must be text or token ids (a sequence of integers); got {describe(value)}")
