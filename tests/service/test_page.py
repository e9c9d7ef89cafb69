"""The page in a real browser: Debian's Chromium driven by Playwright (never `playwright install`).

Types a prompt, clicks Run, waits for the heatmap, checks that the highest-scored token shown is
the API's, hovers a token for its components, and saves a screenshot (its path is printed).
"""
from __future__ import annotations

import os
import shutil

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PROMPT, TARGET = "w3 w1 w4 w1 w5", " w9"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def test_page_runs_an_attribution_and_shows_the_api_top_token(service_url, browser, tmp_path):
    from heta_fast.result import Attribution

    page = browser.new_page(viewport={"width": 1000, "height": 700})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    _submit(page, service_url)
    page.wait_for_selector("#heatmap .tok")
    shown = page.inner_text("#top-token")
    tokens = page.locator("#heatmap .tok")
    assert tokens.count() == 5

    api = httpx.post(service_url + "v1/attributions", params={"wait": 60}, json={"prompt": PROMPT, "target": TARGET},
                     timeout=90).json()
    result = Attribution.from_dict(api["result"])
    assert shown == result.topk(1)[0][1]
    # Every token at its own position: the prompt repeats w1, so the text alone would not tell.
    assert tokens.all_inner_texts() == result.context_tokens
    shown_scores = [float(x) for x in tokens.evaluate_all("spans => spans.map((s) => s.dataset.score)")]
    assert shown_scores == pytest.approx(result.scores[0].tolist(), rel=1e-6)

    tokens.nth(0).hover()
    tip = page.inner_text("#tooltip")
    assert all(name in tip for name in ("score", "flow", "curvature", "information"))
    shot = tmp_path / "heta-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 0
    page.check("#words")
    words = result.aggregate("words")  # the page aggregates by the same rule
    assert page.locator("#heatmap .tok").count() == len(words.context_tokens)
    assert page.inner_text("#top-token") == words.topk(1)[0][1]
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert all(url.startswith(service_url) or url.startswith("blob:") for url in requested), requested
    page.close()


def test_with_a_token_the_page_asks_for_it_once(limited_service, browser):
    """401 and the login form first (no page, no request to the API); the right token gives an
    HttpOnly, SameSite=Strict session cookie; the page then runs an attribution with it."""
    from tests.service.helpers import TOKEN

    url = limited_service[0]
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(90_000)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    first = page.goto(url)
    assert first.status == 401 and page.locator("#prompt").count() == 0
    assert requested == [url]  # the login form loads nothing else
    page.fill("#login-token", "wrong")
    page.click("#login-submit")
    assert "not the service" in page.inner_text("#login-error") and context.cookies() == []
    page.fill("#login-token", TOKEN)
    page.click("#login-submit")
    page.wait_for_selector("#prompt")
    assert page.url == url
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    page.wait_for_function("document.getElementById('model').textContent.includes('float32')")
    page.fill("#prompt", PROMPT)
    page.fill("#target", TARGET)
    page.click("details summary")
    page.uncheck(".component[value=curvature]")  # cheap: this service stops jobs after 4 s
    page.click("#run")
    page.wait_for_selector("#heatmap .tok")
    assert page.locator("#heatmap .tok").count() == 5
    context.close()

    fresh = browser.new_context()  # ?token= once: the cookie, and the address without the token
    page = fresh.new_page()
    assert page.goto(f"{url}?token={TOKEN}").status == 200
    assert page.url == url and page.locator("#prompt").count() == 1 and len(fresh.cookies()) == 1
    fresh.close()


def test_the_chat_box_sends_messages(service_url, browser):
    """'as a chat message' sends the text as a user message: on a model without a chat template
    the service's one-line refusal (naming the field) is what the page shows."""
    page = browser.new_page()
    _submit(page, service_url, chat=True)
    page.wait_for_selector("#status.error")
    status = page.inner_text("#status")
    assert status.startswith("messages: ") and "has no chat template" in status
    page.close()


def _submit(page, url: str, chat: bool = False) -> None:
    """Open the page at ``url`` and run PROMPT -> TARGET from its form (as a chat message if asked)."""
    page.set_default_timeout(90_000)
    page.goto(url)
    page.fill("#prompt", PROMPT)
    page.fill("#target", TARGET)
    if chat:
        page.check("#chat")
    page.click("#run")


def test_the_page_says_when_the_results_file_could_not_be_written(limited_service, browser):
    """The result is shown, and the status line says why the service's results file is missing."""
    from tests.service.helpers import TOKEN

    url, results = limited_service
    aside = results.with_name(results.name + "-aside")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(90_000)
    assert page.goto(f"{url}?token={TOKEN}").status == 200
    page.fill("#prompt", PROMPT)
    page.fill("#target", TARGET)
    page.click("details summary")
    page.uncheck(".component[value=curvature]")  # cheap: this service stops jobs after 4 s
    results.rename(aside)  # the folder gone while the service runs
    try:
        page.click("#run")
        page.wait_for_selector("#heatmap .tok")
    finally:
        aside.rename(results)
    status = page.inner_text("#status")
    assert status.startswith("done in ") and "could not be written" in status
    assert page.get_attribute("#status", "class") == "error"
    context.close()
