"""Access to a service started with a token: every path but /healthz and /login needs the bearer
header or the page's session cookie; refused requests get 401 and cause no work."""
from __future__ import annotations

import httpx
import pytest

from heta_fast.service.access import local_path
from tests.service.helpers import TOKEN, metric

AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"prompt": "w1 w2 w3", "target": " w4", "options": {"components": ["flow"]}}
HTML = {"Accept": "text/html,application/xhtml+xml"}
PAGE = {"X-Heta-Fast": "page"}
# Every route of the service, and a made-up one (method, path, JSON body).
ROUTES = [("GET", "/", None), ("GET", "/static/app.js", None), ("GET", "/static/style.css", None),
          ("GET", "/static/index.html", None), ("GET", "/openapi.json", None), ("GET", "/docs", None),
          ("GET", "/redoc", None), ("GET", "/metrics", None), ("GET", "/v1/models", None),
          ("POST", "/v1/attributions?wait=5", QUICK), ("GET", "/v1/attributions/x", None),
          ("DELETE", "/v1/attributions/x", None), ("GET", "/v1/attributions/x/events", None),
          ("OPTIONS", "/v1/attributions", None), ("GET", "/no-such-path", None)]


@pytest.fixture(scope="module")
def service(limited_service):
    url = limited_service[0].rstrip("/")
    with httpx.Client(timeout=30, headers=AUTH) as owner:
        yield url, owner


def _submitted(owner, url) -> float:
    return metric(owner.get(url + "/metrics").text, "heta_jobs_submitted_total")


def _session(owner, url) -> dict:
    """The session cookie (as a Cookie header) the login form gives for the right token."""
    r = httpx.post(url + "/login", data={"token": TOKEN, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    name, _, value = r.headers["set-cookie"].split(";")[0].partition("=")
    return {"Cookie": f"{name}={value}"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"},
                                     {"Cookie": "SESSION=forged"}])
def test_every_route_but_healthz_needs_the_token_and_no_work_is_done(service, headers):
    url, owner = service
    if "Cookie" in headers:  # the session cookie's name for this port, with a made-up value
        headers = {"Cookie": headers["Cookie"].replace("SESSION", f"heta_fast_session_{url.rsplit(':', 1)[1]}")}
    before = _submitted(owner, url)
    with httpx.Client(timeout=10, headers=headers) as anonymous:
        for method, path, body in ROUTES:
            r = anonymous.request(method, url + path, json=body)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["detail"].startswith("authorization:")
            assert "heatmap" not in r.text and "openapi" not in r.text
        assert anonymous.get(url + "/healthz").json() == {"status": "ok"}
    assert _submitted(owner, url) == before


def test_a_browser_gets_the_login_form_then_a_session_cookie(service):
    url, owner = service
    before = _submitted(owner, url)
    page = httpx.get(url + "/", headers=HTML)
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert 'name="token"' in page.text and 'id="prompt"' not in page.text and "set-cookie" not in page.headers
    assert httpx.get(url + "/login").status_code == 200
    wrong = httpx.post(url + "/login", data={"token": "wrong", "next": "/"})
    assert wrong.status_code == 401 and "not the service" in wrong.text and "set-cookie" not in wrong.headers
    right = httpx.post(url + "/login", data={"token": TOKEN, "next": "/docs"})
    assert right.status_code == 303 and right.headers["location"] == "/docs"
    flags = [part.strip() for part in right.headers["set-cookie"].split(";")[1:]]
    assert {"Path=/", "HttpOnly", "SameSite=Strict"} <= set(flags)
    assert TOKEN not in right.headers["set-cookie"]  # an HMAC of the token, not the token
    assert httpx.get(url + "/login?next=/docs", headers=_session(owner, url)).headers["location"] == "/docs"
    assert _submitted(owner, url) == before


def test_the_session_cookie_opens_the_page_and_with_the_page_header_the_api(service):
    url, owner = service
    cookie = _session(owner, url)
    for path in ("/", "/static/app.js", "/openapi.json", "/v1/models"):
        assert httpx.get(url + path, headers=cookie).status_code == 200, path
    before = _submitted(owner, url)
    # The cookie alone does not submit or cancel (another site's form could send it): 401, no job.
    assert httpx.post(url + "/v1/attributions", json=QUICK, headers=cookie).status_code == 401
    assert httpx.delete(url + "/v1/attributions/x", headers=cookie).status_code == 401
    assert _submitted(owner, url) == before
    done = httpx.post(url + "/v1/attributions?wait=30", json=QUICK, headers={**cookie, **PAGE}, timeout=60)
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    assert _submitted(owner, url) == before + 1
    # A forged or stale value, or another port's name, is no session.
    name = cookie["Cookie"].split("=")[0]
    for forged in (f"{name}=0", f"{name}x={cookie['Cookie'].split('=', 1)[1]}"):
        assert httpx.get(url + "/v1/models", headers={"Cookie": forged}).status_code == 401


def test_token_in_the_address_becomes_a_cookie_and_leaves_the_address(service):
    url, owner = service
    r = httpx.get(url + f"/docs?token={TOKEN}&x=1")
    assert r.status_code == 303 and r.headers["location"] == "/docs?x=1"
    assert "HttpOnly" in r.headers["set-cookie"]
    wrong = httpx.get(url + "/?token=wrong", headers=HTML)
    assert wrong.status_code == 401 and "not the service" in wrong.text and "set-cookie" not in wrong.headers
    assert httpx.get(url + "/v1/models?token=wrong").status_code == 401


def test_login_redirects_only_to_this_service(service):
    url, _ = service
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        r = httpx.post(url + "/login", data={"token": TOKEN, "next": evil})
        assert r.headers["location"] == "/", evil
    assert local_path("/v1/models?x=1") == "/v1/models?x=1"
    big = httpx.post(url + "/login", content=b"token=" + b"x" * 10_000,
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    assert httpx.put(url + "/login").status_code == 405
