"""The service's limits and access settings (``heta-fast serve`` options), checked on construction."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..scheduler import BATCHING

TOKEN_ENV = "HETA_FAST_TOKEN"


@dataclass(frozen=True)
class ServiceSettings:
    """max_queue: jobs waiting at most (more -> 429); max_prompt_chars / max_prompt_ids: longest prompt
    or target accepted as text / as token ids (longer -> 413); max_body_bytes: largest request body
    (-> 413); max_generate: largest ``generate``; job_timeout: seconds a job may run (from its first
    step) before it fails with ``JobTimeoutError``; max_wait: longest ``?wait=``; results_ttl /
    max_results: how long and how many finished jobs are kept; max_group: queued jobs the worker
    hands the scheduler at once; batching: whether such a group shares its model passes ("auto": on
    CUDA only, "on", "off"; heta_fast/scheduler.py); token: bearer token (None: open); cors_origins: allowed origins
    (empty: no CORS headers); results_dir: folder each finished result is written to (None: nothing
    is written)."""

    max_queue: int = 64
    max_prompt_chars: int = 20_000
    max_prompt_ids: int = 8_192
    max_body_bytes: int = 1_000_000
    max_generate: int = 64
    job_timeout: float = 300.0
    max_wait: float = 60.0
    results_ttl: float = 3600.0
    max_results: int = 1000
    max_group: int = 8
    batching: str = "auto"
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    results_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_prompt_chars", "max_prompt_ids", "max_body_bytes", "max_generate",
                     "max_results", "max_group"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("job_timeout", "max_wait", "results_ttl"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.batching not in BATCHING:
            raise ConfigError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the token must not be empty")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
