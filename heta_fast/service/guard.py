"""ASGI middleware in front of the API: bearer token, body size limit, request metrics.

The token is compared in constant time (``hmac.compare_digest``); a request without it or with a
wrong one gets 401 before its body is read, so it causes no work. Open without a token: ``/healthz``,
the page (``/`` and ``/static/...``) and the OpenAPI schema/docs (they hold no data).
A body over ``max_body_bytes`` gets 413 (declared length or bytes actually sent).
"""
from __future__ import annotations

import hmac
import json
import time

PUBLIC_PATHS = ("/healthz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/favicon.ico")


def _route(path: str) -> str:
    """The route template for metrics labels (job ids collapsed)."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "v1" and parts[2] == "attributions":
        parts[3] = "{id}"
    if path.startswith("/static/"):
        return "/static/{file}"
    return "/".join(parts)


async def _send_json(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Wraps the FastAPI app; ``token``: required bearer token or None; ``metrics``: a Metrics."""

    def __init__(self, app, token: str | None, max_body_bytes: int, metrics):
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path, status = time.perf_counter(), scope.get("path", ""), [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_counted, path)
        finally:
            self.metrics.count_request(scope.get("method", ""), _route(path), status[0], time.perf_counter() - start)

    async def _handle(self, scope, receive, send, path):
        if self.expected is not None and scope.get("method") != "OPTIONS" and not self._public(path):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return await _send_json(send, 401, "authorization: a valid 'Bearer' token is required",
                                        [(b"www-authenticate", b"Bearer")])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                return await _send_json(send, 400, "content-length: not an integer")
            if too_big:
                return await _send_json(send, 413, f"body: larger than the limit of {self.max_body} bytes")
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _send_json(send, 413, f"body: larger than the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), [False]

        async def replay():
            if sent[0]:
                return await receive()
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith("/static/")
