"""ASGI middleware in front of the API: access (``access.py``), body size limit, request metrics.

With a token, every path but ``/healthz`` and ``/login`` needs the bearer header or the page's
session cookie (``access.py``); the check runs before the body is read, so a refused request
causes no work: 401 with JSON, or the login form (still 401) for a browser navigating to a page.
A body over ``max_body_bytes`` gets 413 (declared length or bytes actually sent).
"""
from __future__ import annotations

import json
import time
import urllib.parse

from .access import (
    LOGIN_BODY_BYTES,
    LOGIN_PATH,
    SAFE_METHODS,
    Access,
    form_fields,
    local_path,
    login_page,
    wants_html,
    without_token,
)

UNAUTHORIZED = "authorization: a valid 'Bearer' token is required"
ROUTES = ("/", LOGIN_PATH, "/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/v1/models", "/v1/attributions", "/v1/attributions/{id}", "/v1/attributions/{id}/events")


def _route(path: str) -> str:
    """The route template for metrics labels (job ids collapsed; any other path is "other", so
    requests for made-up paths cannot grow the metrics)."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "v1" and parts[2] == "attributions":
        parts[3] = "{id}"
    if path.startswith("/static/"):
        return "/static/{file}"
    route = "/".join(parts)
    return route if route in ROUTES else "other"


async def _send(send, status: int, body: bytes, content_type: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _send(send, status, json.dumps({"detail": detail}).encode(), b"application/json", headers)


async def _send_login(send, status: int, next_path: str, message: str = "", headers=()) -> None:
    await _send(send, status, login_page(next_path, message), b"text/html; charset=utf-8",
                [(b"www-authenticate", b"Bearer"), *headers] if status == 401 else headers)


async def _redirect(send, location: str, headers=()) -> None:
    await _send(send, 303, b"", b"text/plain", [(b"location", location.encode("latin-1")), *headers])


def _address(scope) -> str:
    """The request's own path and query string (to come back to after logging in)."""
    path = urllib.parse.quote(scope.get("path", "/"))
    query = (scope.get("query_string") or b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


class Guard:
    """Wraps the FastAPI app; ``token``: required bearer token or None; ``metrics``: a Metrics."""

    def __init__(self, app, token: str | None, max_body_bytes: int, metrics):
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes
        self.access = Access(token) if token else None

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
        if self.access is not None and path != "/healthz":
            if path == LOGIN_PATH:
                return await self._login(scope, receive, send)
            if scope.get("method") in SAFE_METHODS:
                token, rest = without_token(scope)
                if token is not None:  # ?token=: a session cookie, then the same address without it
                    if self.access.token_matches(token):
                        return await _redirect(send, local_path(rest),
                                               [self.access.set_cookie(scope)])
                    return await self._refuse(scope, send, "token: not the service's token", rest)
            if not self.access.allows(scope):
                return await self._refuse(scope, send, UNAUTHORIZED, _address(scope))
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

    async def _refuse(self, scope, send, detail: str, address: str):
        """401: the login form for a browser navigating to a page, else the one-line JSON."""
        if wants_html(scope):
            return await _send_login(send, 401, address, "" if detail == UNAUTHORIZED else detail)
        return await _send_json(send, 401, detail, [(b"www-authenticate", b"Bearer")])

    async def _login(self, scope, receive, send):
        """GET /login: the form; POST /login (form field ``token``): the session cookie, then ``next``."""
        method = scope.get("method")
        if method in SAFE_METHODS:
            pairs = urllib.parse.parse_qsl((scope.get("query_string") or b"").decode("latin-1"))
            next_path = local_path(dict(pairs).get("next"))
            if self.access.allows(scope):
                return await _redirect(send, next_path)
            return await _send_login(send, 200, next_path)
        if method != "POST":
            return await _send_json(send, 405, "method: /login takes GET or POST", [(b"allow", b"GET, POST")])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > LOGIN_BODY_BYTES:
                return await _send_json(send, 413, f"body: larger than the login form's {LOGIN_BODY_BYTES} bytes")
            if not message.get("more_body"):
                break
        fields = form_fields(b"".join(chunks))
        next_path = local_path(fields.get("next"))
        if self.access.token_matches(fields.get("token", "")):
            return await _redirect(send, next_path, [self.access.set_cookie(scope)])
        return await _send_login(send, 401, next_path, "That is not the service's token.")
