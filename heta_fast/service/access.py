"""Who may use a service started with a token: the bearer header, or the page's session cookie.

Every path but ``/healthz`` and ``/login`` needs one of:

* ``Authorization: Bearer <token>`` (programs, ``heta_fast.client.Client``);
* the session cookie a browser gets by giving the token once, in the login form (``POST /login``,
  also what an unauthenticated page request answers with, status 401) or as ``?token=`` on any
  GET (answered by a redirect to the same address without it). The cookie is ``HttpOnly`` (no
  script reads it), ``SameSite=Strict`` (no other site's page sends it), ``Path=/``, ``Secure``
  over https, and lives until the browser closes; its value is an HMAC of a fixed label under the
  token, so the token itself is never stored in the browser and a new token ends every session.
  A request that changes something (POST, DELETE) counts the cookie only with the header
  ``X-Heta-Fast: page`` (the page's scripts send it; another origin cannot without a CORS
  preflight this service refuses), so the cookie alone cannot be used to submit work.

Secrets are compared with ``hmac.compare_digest``. Nothing here reads a request body but the
login form's (at most ``LOGIN_BODY_BYTES``).
"""
from __future__ import annotations

import hashlib
import hmac
import html
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

LOGIN_PATH = "/login"
OPEN_PATHS = ("/healthz", LOGIN_PATH)
PAGE_HEADER = (b"x-heta-fast", b"page")  # sent by the page's scripts with every POST/DELETE
SAFE_METHODS = ("GET", "HEAD")
LOGIN_BODY_BYTES = 4096
LOGIN_PAGE = Path(__file__).parent / "static" / "login.html"
SESSION_LABEL = b"heta-fast page session v1"


class Access:
    """The checks of one token (``token``: the bearer token the service was started with)."""

    def __init__(self, token: str):
        secret = token.encode()
        self.bearer = b"Bearer " + secret
        self.session = hmac.new(secret, SESSION_LABEL, hashlib.sha256).hexdigest().encode()
        self.secret = secret

    # ------------------------------------------------------------------ checks
    def token_matches(self, given: str | bytes) -> bool:
        """``given`` is the token itself (login form, ``?token=``)."""
        return hmac.compare_digest(given.encode() if isinstance(given, str) else given, self.secret)

    def allows(self, scope) -> bool:
        """The request carries the bearer header, or the session cookie (with the page header when
        it changes something)."""
        headers = scope.get("headers") or []
        bearer = b"".join(v for k, v in headers if k == b"authorization")
        if hmac.compare_digest(bearer, self.bearer):
            return True
        cookie = self._cookie(scope)
        if cookie is None or not hmac.compare_digest(cookie, self.session):
            return False
        return scope.get("method") in SAFE_METHODS or PAGE_HEADER in headers

    @staticmethod
    def cookie_name(scope) -> str:
        """One cookie per port (cookies ignore ports: two services on one host keep their own)."""
        server = scope.get("server") or ("", 0)
        return f"heta_fast_session_{server[1] or 0}"

    def _cookie(self, scope) -> bytes | None:
        name = self.cookie_name(scope)
        for key, value in scope.get("headers") or []:
            if key != b"cookie":
                continue
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session
                continue
            if name in jar:
                return jar[name].value.encode("latin-1", "replace")
        return None

    def set_cookie(self, scope) -> tuple[bytes, bytes]:
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        value = f"{self.cookie_name(scope)}={self.session.decode()}; Path=/; HttpOnly; SameSite=Strict{secure}"
        return b"set-cookie", value.encode()


def wants_html(scope) -> bool:
    """A browser navigating (a GET that accepts text/html): it gets the login form, not JSON."""
    accept = b"".join(v for k, v in scope.get("headers") or [] if k == b"accept")
    return scope.get("method") in SAFE_METHODS and b"text/html" in accept


def local_path(value: str | None) -> str:
    """Where to go after logging in: a path on this service only (no scheme, host or ``//``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))


def without_token(scope) -> tuple[str | None, str]:
    """``(token, address without it)`` of a GET's query string (token None when absent)."""
    pairs = urllib.parse.parse_qsl((scope.get("query_string") or b"").decode("latin-1"), keep_blank_values=True)
    token = next((v for k, v in pairs if k == "token"), None)
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k != "token"])
    return token, urllib.parse.quote(scope.get("path", "/")) + (f"?{rest}" if rest else "")


def login_page(next_path: str, message: str = "") -> bytes:
    """The login form (self-contained: no script, its style inline), HTML-escaped."""
    text = LOGIN_PAGE.read_text(encoding="utf-8")
    return (text.replace("{{next}}", html.escape(local_path(next_path), quote=True))
            .replace("{{message}}", html.escape(message))).encode()


def form_fields(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the login form) as a dict."""
    return dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
