"""The FastAPI application: ``create_app(attributor, settings)``.

Endpoints: POST /v1/attributions (``?wait=SECONDS``), GET (``?wait=SECONDS``: until it is
finished) / DELETE /v1/attributions/{id}, GET /v1/attributions/{id}/events (server-sent events),
GET /v1/models, /healthz, /metrics, and the page at / (files in ``static/``, no external code);
with a token, also /login (``access.py``). A waiting request sleeps until the worker changes its
job (no polling). Client errors are 4xx with ``{"detail": "<field>: <what>"}``.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admit import Admission, RequestError
from .guard import Guard
from .jobs import TERMINAL, JobManager, QueueFullError
from .metrics import Metrics
from .schema import AttributionRequest, Health, JobView, ModelsView, finite_seconds, shown
from .settings import ServiceSettings

STATIC = Path(__file__).parent / "static"  # the page: index.html, app.js, style.css
HEARTBEAT_SECONDS = 15.0  # an events stream sends a comment line when nothing changed for this long
DISCONNECT_SECONDS = 1.0  # how often an idle events stream checks that its client is still there
MAX_WAIT = 3600.0  # the largest ?wait= accepted (the service's --max-wait caps what it waits)
Wait = Annotated[float, Query(ge=0.0, le=MAX_WAIT, description="seconds to wait for the job to finish (at most the "
                              "service's --max-wait)"), finite_seconds(MAX_WAIT)]


def create_app(attributor, settings: ServiceSettings | None = None):
    """The ASGI app serving ``attributor`` (its worker starts with the app and stops with it)."""
    settings = settings or ServiceSettings()
    metrics = Metrics()
    jobs = JobManager(attributor, settings, metrics)
    admission = Admission(attributor, settings)

    @asynccontextmanager
    async def lifespan(app):
        jobs.start()
        yield
        jobs.stop()

    app = FastAPI(title="heta-fast", version="1", lifespan=lifespan,
                  description="HETA token attribution as a service; results use Attribution.to_dict's schema.")
    app.state.jobs, app.state.settings = jobs, settings
    _errors(app)

    @app.post("/v1/attributions", response_model=JobView, status_code=202,
              responses={200: {"model": JobView, "description": "finished within ?wait"},
                         413: {"description": "too large"}, 422: {"description": "invalid request"},
                         429: {"description": "queue full (Retry-After)"}})
    async def submit(body: AttributionRequest, wait: Wait = 0.0):
        admitted = await run_in_threadpool(admission.admit, body)
        try:
            job = jobs.submit(admitted.prompt, admitted.target, admitted.generate, admitted.config,
                              admitted.messages)
        except QueueFullError as exc:
            return JSONResponse({"detail": f"queue: {exc}"}, 429, headers={"Retry-After": str(exc.retry_after)})
        view = await _finished(jobs, job, min(wait, settings.max_wait))
        return JSONResponse(view, 200 if view["status"] in TERMINAL else 202)

    @app.get("/v1/attributions/{job_id}", response_model=JobView, responses={404: {"description": "unknown id"}})
    async def status(job_id: str, wait: Wait = 0.0):
        return await _finished(jobs, _job(jobs, job_id), min(wait, settings.max_wait))

    @app.delete("/v1/attributions/{job_id}", response_model=JobView, responses={404: {"description": "unknown id"}})
    async def cancel(job_id: str):
        job = jobs.cancel(job_id)
        if job is None:
            raise RequestError(404, f"id: no job {job_id!r} (unknown or expired)")
        return jobs.snapshot(job)[1]

    @app.get("/v1/attributions/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}},
                                                            404: {"description": "unknown id"}})
    async def events(job_id: str, request: Request):
        job = _job(jobs, job_id)
        return StreamingResponse(_events(jobs, job, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models", response_model=ModelsView)
    async def models():
        return {"models": [_model_info(attributor)]}

    @app.get("/healthz", response_model=Health)
    async def healthz():
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    asgi = Guard(app, settings.token, settings.max_body_bytes, metrics)
    if settings.cors_origins:
        asgi = CORSMiddleware(asgi, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "DELETE"],
                              allow_headers=["Authorization", "Content-Type"])
    asgi.state, asgi.openapi = app.state, app.openapi  # for tests and tools that look at the app
    return asgi


def _job(jobs: JobManager, job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise RequestError(404, f"id: no job {job_id!r} (unknown or expired)")
    return job


class _Watch:
    """An asyncio event set (from the worker thread) whenever ``job`` changes; use with ``with``."""

    def __init__(self, jobs: JobManager, job):
        self.jobs, self.job = jobs, job
        self.loop, self.changed = asyncio.get_running_loop(), asyncio.Event()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.changed.set)
        except RuntimeError:  # the loop has closed (shutdown)
            pass

    def __enter__(self):
        self.jobs.watch(self.job, self._wake)
        return self

    def __exit__(self, *exc):
        self.jobs.unwatch(self.job, self._wake)

    async def next(self, seen: int, timeout: float) -> tuple[int, dict]:
        """The job's (version, view) once its version is not ``seen`` or after ``timeout`` seconds."""
        self.changed.clear()
        version, view = self.jobs.snapshot(self.job)
        if version == seen and timeout > 0:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            version, view = self.jobs.snapshot(self.job)
        return version, view


async def _finished(jobs: JobManager, job, wait: float) -> dict:
    """The job's view once it is finished, or after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    with _Watch(jobs, job) as watch:
        version, view = jobs.snapshot(job)
        while view["status"] not in TERMINAL and time.monotonic() < deadline:
            version, view = await watch.next(version, deadline - time.monotonic())
    return view


async def _events(jobs: JobManager, job, request: Request):
    """SSE: a ``status`` event on every change (phase, progress, final state), then the stream ends."""
    seen, last = -1, time.monotonic()
    with _Watch(jobs, job) as watch:
        while True:
            version, view = await watch.next(seen, DISCONNECT_SECONDS)
            if version != seen:
                seen, last = version, time.monotonic()
                view = {k: v for k, v in view.items() if k != "result"}
                yield f"event: {view['status']}\ndata: {json.dumps(view)}\n\n"
                if view["status"] in TERMINAL:
                    return
            elif time.monotonic() - last > HEARTBEAT_SECONDS:
                last = time.monotonic()
                yield ": heartbeat\n\n"
            if await request.is_disconnected():
                return


def _model_info(attributor) -> dict:
    cfg = attributor.model.config
    tok = attributor.tokenizer
    return {"name": attributor.model_name, "architecture": (getattr(cfg, "architectures", None) or [None])[0],
            "model_type": getattr(cfg, "model_type", None),
            "dtype": attributor.adapter.dtype_name, "device": str(attributor.adapter.device),
            "max_context": attributor.adapter.max_length,
            "special_tokens": sorted(set(getattr(tok, "all_special_tokens", []) or [])),
            "config": attributor.config.to_dict()}


def _errors(app: FastAPI) -> None:
    """Every client error as ``{"detail": one line naming the field}``."""

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"detail": exc.detail}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid"}
        if first.get("type") == "json_invalid":
            return JSONResponse({"detail": f"body: not valid JSON ({first.get('msg', 'invalid')})"}, 422)
        # Union members ("str", "list[int]") are not fields: drop them from the location.
        names = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_name(p)]
        where = ".".join(names) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        got = f", got {shown(first['input'])}" if _is_type_error(first) else ""
        return JSONResponse({"detail": " ".join(f"{where}: {first.get('msg', 'invalid')}{got}{more}".split())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return JSONResponse({"detail": " ".join(str(exc.detail).split())}, exc.status_code, headers=exc.headers)


def _is_type_error(error: dict) -> bool:
    """A value of the wrong JSON type (``"0.7"`` for a number, ``true`` for an integer): worth showing,
    since the field's name alone does not say which value was refused."""
    return str(error.get("type", "")).endswith("_type") and "input" in error


def _is_type_name(part) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)
