"""The admin page, driven in a real browser (Debian's Chromium through Playwright) against a
running `keygate serve` whose providers all point at the scriptable mock upstream.

Besides the behaviour checks, the browser test saves screenshots of every page at desktop and
phone widths into artifacts/screenshots/ (CI keeps that folder as build artifacts).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from harness import eventually

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
PAGES = ("dashboard", "keys", "providers", "models", "clients", "requests", "connect")
XSS = "<img src=x onerror=alert(1)>"
DASH = "\u2013"  # ranges on the page read "1<en dash>50 of 100"
TIMEOUT_MS = 10_000


# --- the real page in Chromium against a running gateway ---------------------------------------


_CONVERSATIONS = itertools.count()


def proxy_burst(gw: Any, n: int, provider: str = "cerebras") -> float:
    """Send n chat requests at once through the gateway; seconds until all answered 200."""
    statuses: list[int] = []

    def one() -> None:
        # each its own conversation (SPEC §15): spread over the keys, as many users' would be
        text = f"hi {next(_CONVERSATIONS)}"
        r = httpx.post(
            f"{gw.url}/{provider}/v1/chat/completions",
            headers=gw.auth(),
            json={"model": "ui-test-model", "messages": [{"role": "user", "content": text}]},
            timeout=30,
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert statuses == [200] * n, statuses
    return elapsed


def key_ids(gw: Any, provider: str = "cerebras") -> dict[str, int]:
    """Last four characters of each key → its id."""
    keys = gw.api("GET", "/api/keys", params={"provider": provider, "limit": 500}).json()["keys"]
    return {k["masked"][-4:]: k["id"] for k in keys}


def goto_view(page: Page, view: str) -> None:
    page.click(f'.nav-link[data-view="{view}"]')
    expect(page.locator(f'.nav-link[data-view="{view}"]')).to_have_class(re.compile("is-active"))


def settle(page: Page, view: str) -> None:
    """Wait until a view shows its data (not its loading line)."""
    ready = {
        "dashboard": ".prov-card .chart .uplot canvas, .empty",
        "keys": ".keys-table tbody tr, .empty",
        "providers": ".prov-table tbody tr",
        "clients": ".clients-table tbody tr, .empty",
        "requests": ".req-table tbody tr, .empty",
        "models": "#models-routes .models-table, #models-routes .empty",
        "connect": "#immersive-url, #snippet-python",
    }[view]
    page.wait_for_selector(ready, timeout=TIMEOUT_MS)
    expect(page.locator(".view .loading:visible")).to_have_count(0)
    page.wait_for_timeout(300)


def screenshots(page: Page, width: str, lang: str = "en") -> None:
    for view in PAGES:
        goto_view(page, view)
        settle(page, view)
        suffix = "" if lang == "en" else f"-{lang}"
        page.screenshot(path=str(SHOTS / f"{view}-{width}{suffix}.png"), full_page=True)


def test_admin_page_in_browser(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(env={"KEYGATE_FLUSH_INTERVAL_MS": "500"})
    SHOTS.mkdir(parents=True, exist_ok=True)
    secrets = [f"sk-ui-test-{i}-{'x' * 12}{i:04d}" for i in range(1, 6)]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            ctx = browser.new_context(viewport=DESKTOP)
            ctx.set_default_timeout(TIMEOUT_MS)
            page = ctx.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            console_errors: list[str] = []
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            page.add_init_script(
                "window.__csp = [];"
                "document.addEventListener('securitypolicyviolation',"
                " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
            )

            # --- login: the path without slash redirects; a wrong password is refused -------
            page.goto(gw.url + "/admin")
            assert page.url == gw.url + "/admin/"
            expect(page.locator("#login")).to_be_visible()
            page.screenshot(path=str(SHOTS / "login-desktop.png"))
            page.fill("#login-password", "not-the-password")
            page.click("#login-submit")
            expect(page.locator("#login-message")).to_have_text("Wrong password or token.")
            page.fill("#login-password", gw.admin_password)
            page.click("#login-submit")
            expect(page.locator("#shell")).to_be_visible()
            expect(page.locator(".page-title")).to_have_text("Dashboard")
            # nothing yet: the dashboard says what to do next
            expect(page.locator(".empty-title")).to_have_text("Nothing to show yet")
            cookie = next(c for c in ctx.cookies() if c["name"] == "keygate_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # the session survives a reload
            page.reload()
            expect(page.locator("#shell")).to_be_visible()
            expect(page.locator("#login")).to_be_hidden()

            # --- keys: empty state, add one with a hostile label -----------------------------
            goto_view(page, "keys")
            expect(page.locator("#keys-provider")).to_have_value("cerebras")
            expect(page.locator(".empty-body")).to_have_text(
                "No keys yet — add one or paste many into Batch import."
            )
            page.click("button:has-text('Add key')")
            page.fill("#add-key", secrets[0])
            page.fill("#add-label", XSS)
            page.click("#add-panel button[type=submit]")
            expect(page.locator(".keys-table tbody tr")).to_have_count(1)
            ids = key_ids(gw)
            row1 = page.locator(f'tr[data-id="{ids["0001"]}"]')
            expect(row1.locator(".key-label")).to_have_text(XSS)
            assert row1.locator("img").count() == 0
            assert page.locator("img[src='x']").count() == 0
            expect(row1.locator(".key-masked")).to_have_text("sk-u…0001")

            # --- batch import five, one of them a duplicate ---------------------------------
            page.click("button:has-text('Batch import')")
            page.fill("#batch-input", "\n".join([*secrets[1:], secrets[0]]))
            page.click("#batch-panel button[type=submit]")
            expect(page.locator("#batch-summary")).to_have_text("4 added · 1 duplicate · 0 invalid")
            expect(page.locator(".batch-item")).to_have_count(5)
            expect(page.locator('.batch-item[data-status="duplicate"]')).to_have_count(1)
            expect(page.locator('.batch-item[data-status="added"]')).to_have_count(4)
            expect(page.locator("#keys-range")).to_have_text(f"1{DASH}5 of 5")
            page.screenshot(path=str(SHOTS / "keys-batch-desktop.png"), full_page=True)
            page.click("#batch-panel .icon-btn")
            ids = key_ids(gw)
            assert len(ids) == 5
            rows = {suffix: page.locator(f'tr[data-id="{ids[suffix]}"]') for suffix in ids}

            # --- disable one ----------------------------------------------------------------
            rows["0002"].locator(".btn-toggle").click()
            expect(rows["0002"]).to_have_attribute("data-status", "disabled")
            expect(rows["0002"].locator(".badge-state-disabled")).to_have_text("disabled")
            expect(rows["0002"].locator(".btn-toggle")).to_have_text("Enable")
            assert (
                gw.api(
                    "GET", "/api/keys", params={"provider": "cerebras", "status": "disabled"}
                ).json()["total"]
                == 1
            )

            # --- test keys against the mock: one it refuses, one it accepts -----------------
            mock.set_behavior(secrets[2], status=401)
            rows["0003"].locator(".btn-test").click()
            expect(rows["0003"].locator(".test-result")).to_contain_text("401")
            expect(rows["0003"]).to_have_attribute("data-status", "invalid")
            expect(rows["0003"].locator(".badge-state-invalid")).to_be_visible()
            rows["0004"].locator(".btn-test").click()
            expect(rows["0004"].locator(".test-result")).to_have_text(
                re.compile(r"^200 · [\d.]+ ms$")
            )
            expect(rows["0004"].locator(".test-result")).to_have_class(re.compile("badge-ok"))

            # --- search and the state filter (server-side) -----------------------------------
            page.fill("#keys-search", "0003")
            expect(page.locator(".keys-table tbody tr")).to_have_count(1)
            expect(page.locator("#keys-range")).to_have_text(f"1{DASH}1 of 1")
            page.fill("#keys-search", "")
            expect(page.locator(".keys-table tbody tr")).to_have_count(5)
            page.select_option("#keys-state", "disabled")
            expect(page.locator(".keys-table tbody tr")).to_have_count(1)
            expect(page.locator(".keys-table tbody tr")).to_have_attribute(
                "data-id", str(ids["0002"])
            )
            page.select_option("#keys-state", "")
            expect(page.locator(".keys-table tbody tr")).to_have_count(5)

            # --- test all: every key but the disabled one ------------------------------------
            page.click("button:has-text('Test all')")
            expect(page.locator(".toast").last).to_have_text("Tested 4 keys: 3 passed, 1 failed.")
            expect(rows["0005"].locator(".test-result")).to_contain_text("200")
            expect(rows["0003"].locator(".test-result")).to_contain_text("401")

            # --- edit a label in place --------------------------------------------------------
            rows["0004"].locator(".label-cell .icon-btn").click()
            page.fill("dialog.modal input", "team account")
            page.click("dialog.modal button[type=submit]")
            expect(rows["0004"].locator(".key-label")).to_have_text("team account")

            # --- providers: validation, the server's 400, then a change the gateway obeys ----
            assert proxy_burst(gw, 3) < 1.0  # defaults (rps 4, burst 8): no waiting
            goto_view(page, "providers")
            cerebras = page.locator('tr[data-provider="cerebras"]')
            expect(cerebras.locator('[data-field="rps"]')).to_have_text("4")
            cerebras.locator(".btn-edit").click()
            dialog = page.locator("dialog.modal")
            expect(dialog).to_be_visible()
            page.fill("#pf-rps", "-1")
            page.click("#prov-save")
            expect(page.locator("#pf-rps-err")).to_have_text("Enter a number, 0 or more.")
            expect(dialog).to_be_visible()
            assert (
                next(
                    p
                    for p in gw.api("GET", "/api/providers").json()["providers"]
                    if p["name"] == "cerebras"
                )["rps"]
                == 4
            )

            def refuse(route: Any) -> None:
                if route.request.method == "PATCH":
                    route.fulfill(
                        status=400,
                        content_type="application/json",
                        body='{"error": {"message": "rps: refused by the server", "type": "invalid_request_error", "code": "invalid_value", "param": "rps"}}',
                    )
                else:
                    route.continue_()

            page.route("**/api/providers/cerebras", refuse)
            page.fill("#pf-rps", "2")
            page.click("#prov-save")
            # the server's 400 message shows at the field it names
            expect(page.locator("#pf-rps-err")).to_have_text("rps: refused by the server")
            expect(page.locator("#pf-rps")).to_have_class(re.compile("is-invalid"))
            page.unroute("**/api/providers/cerebras")
            page.screenshot(path=str(SHOTS / "providers-edit-desktop.png"))

            page.fill("#pf-rps", "1")
            page.fill("#pf-burst", "1")
            page.click("#prov-save")
            expect(dialog).to_have_count(0)
            expect(cerebras.locator('[data-field="rps"]')).to_have_text("1")
            expect(cerebras.locator('[data-field="burst"]')).to_have_text("1")
            prov = next(
                p
                for p in gw.api("GET", "/api/providers").json()["providers"]
                if p["name"] == "cerebras"
            )
            assert (prov["rps"], prov["burst"]) == (1, 1)
            # the running gateway obeys at once: 3 requests at 1/s with a bucket of 1 take ~2 s
            assert proxy_burst(gw, 3) >= 1.6
            # back to brisk limits for the rest (and the charts)
            gw.api("PATCH", "/api/providers/cerebras", json={"rps": 20, "burst": 20})

            # --- delete one: cancel first, then confirm -------------------------------------
            goto_view(page, "keys")
            settle(page, "keys")
            rows["0005"].locator(".btn-delete").click()
            expect(dialog).to_contain_text("Delete this key?")
            dialog.locator("button:has-text('Cancel')").click()
            expect(dialog).to_have_count(0)
            expect(rows["0005"]).to_have_count(1)
            rows["0005"].locator(".btn-delete").click()
            expect(dialog).to_contain_text("sk-u…0005")
            dialog.locator("button.btn-danger").click()
            expect(rows["0005"]).to_have_count(0)
            expect(page.locator("#keys-range")).to_have_text(f"1{DASH}4 of 4")
            assert gw.api("DELETE", f"/api/keys/{ids['0005']}").status_code == 404

            # --- a rate-limited key cools down; the page counts its time down ---------------
            mock.set_behavior(secrets[3], status=429, headers={"retry-after": "90"})

            def cooling() -> int:
                params = {"provider": "cerebras", "status": "cooling"}
                total = int(gw.api("GET", "/api/keys", params=params).json()["total"])
                if not total:
                    proxy_burst(gw, 2)
                return total

            eventually(cooling, 10, "a key went cooling", interval=0)
            countdown = rows["0004"].locator(".countdown")
            expect(countdown).to_have_text(re.compile(r"^(1m \d\ds|\d+s) left$"), timeout=7000)
            expect(rows["0004"].locator(".badge-state-cooling")).to_have_text("cooling")
            first = countdown.text_content()
            expect(countdown).not_to_have_text(first or "", timeout=3000)

            # --- traffic for the dashboard, requests and charts -----------------------------
            mock.set_behavior(secrets[0], delay_s=0.03)
            stop = threading.Event()

            def traffic() -> None:
                with httpx.Client(timeout=30) as c:
                    while not stop.is_set():
                        c.post(
                            f"{gw.url}/cerebras/v1/chat/completions",
                            headers=gw.auth(),
                            json={
                                "model": "llama-3.3-70b",
                                "messages": [{"role": "user", "content": "hi"}],
                            },
                        )
                        time.sleep(0.15)

            pump = threading.Thread(target=traffic, daemon=True)
            pump.start()
            try:
                # recent requests: filter by status and provider
                goto_view(page, "requests")
                settle(page, "requests")
                expect(page.locator(".req-table tbody tr").first).to_contain_text("cerebras")
                page.select_option("#req-status", "4xx")
                expect(page.locator(".empty")).to_be_visible()
                page.select_option("#req-status", "2xx")
                expect(page.locator(".req-table tbody tr").first).to_be_visible()
                statuses = page.locator(".req-table .col-status .badge").all_text_contents()
                assert statuses and set(statuses) == {"200"}
                page.select_option("#req-provider", "groq")
                expect(page.locator(".empty-body")).to_have_text("No requests match these filters.")
                page.select_option("#req-provider", "")
                page.select_option("#req-status", "")

                # dashboard: totals and live charts
                goto_view(page, "dashboard")
                card = page.locator('.prov-card[data-provider="cerebras"]')
                expect(card).to_be_visible()
                # two uPlot charts; the requests/s legend reads the latest rate
                expect(card.locator(".chart .uplot canvas")).to_have_count(2)
                expect(card.locator(".chart-legend-value").first).to_have_text(re.compile(r"^\d"))
                expect(card.locator(".chip-active")).to_contain_text("1 active")
                expect(card.locator(".chip-cooling")).to_contain_text("1 cooling")
                expect(card.locator(".chip-disabled")).to_contain_text("1 disabled")
                expect(card.locator(".chip-invalid")).to_contain_text("1 invalid")

                # connect: snippets built from the page's own origin
                goto_view(page, "connect")
                settle(page, "connect")
                expect(page.locator("#immersive-url")).to_have_text(
                    f"{gw.url}/cerebras/v1/chat/completions"
                )
                expect(page.locator("#snippet-python")).to_contain_text(
                    f'base_url="{gw.url}/cerebras/v1"'
                )
                expect(page.locator("#snippet-curl")).to_contain_text(
                    f"curl {gw.url}/cerebras/v1/chat/completions"
                )

                # --- screenshots: every page, desktop and phone ------------------------------
                page.wait_for_timeout(1500)  # a few seconds of chart
                screenshots(page, "desktop")
                phone = browser.new_context(
                    viewport=PHONE,
                    storage_state=ctx.storage_state(),
                    is_mobile=True,
                    has_touch=True,
                )
                phone.set_default_timeout(TIMEOUT_MS)
                phone_page = phone.new_page()
                phone_page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                phone_page.on("pageerror", lambda e: page_errors.append(str(e)))
                phone_page.goto(gw.url + "/admin/#/dashboard")
                expect(phone_page.locator("#shell")).to_be_visible()
                screenshots(phone_page, "phone")
                # the tables fit the phone's width (they collapse into cards)
                goto_view(phone_page, "keys")
                settle(phone_page, "keys")
                width = phone_page.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], width
                phone.close()
            finally:
                stop.set()
                pump.join(5)

            # --- language: Chinese, remembered across reloads, then back --------------------
            goto_view(page, "keys")
            page.locator('.topbar [data-lang="zh"]').click()
            expect(page.locator('.nav-link[data-view="keys"]')).to_have_text("密钥")
            expect(page.locator(".page-title")).to_have_text("密钥")
            expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
            expect(page.locator(f'tr[data-id="{ids["0002"]}"] .badge-state-disabled')).to_have_text(
                "已禁用"
            )
            page.reload()
            expect(page.locator('.nav-link[data-view="dashboard"]')).to_have_text("仪表盘")
            settle(page, "keys")
            page.screenshot(path=str(SHOTS / "keys-desktop-zh.png"), full_page=True)
            goto_view(page, "dashboard")
            settle(page, "dashboard")
            page.screenshot(path=str(SHOTS / "dashboard-desktop-zh.png"), full_page=True)
            page.locator('.topbar [data-lang="en"]').click()
            expect(page.locator('.nav-link[data-view="keys"]')).to_have_text("Keys")

            # the hostile label never ran, in any view or language
            assert dialogs == []
            assert page.evaluate("window.__csp") == []

            # --- a 401 from any call returns to the login screen ----------------------------
            ctx.clear_cookies()
            goto_view(page, "providers")
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#login-message")).to_have_text(
                "Your session has ended. Please sign in again."
            )

            # --- sign in again, sign out; a reload stays signed out --------------------------
            page.fill("#login-password", gw.admin_password)
            page.click("#login-submit")
            expect(page.locator("#shell")).to_be_visible()
            page.click("#logout")
            expect(page.locator("#login")).to_be_visible()
            page.reload()
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#shell")).to_be_hidden()

            assert dialogs == []
            assert page_errors == []
            # the only console errors are the refused API calls this test provoked on purpose
            unexpected = [m for m in console_errors if not re.search(r"status of (400|401)\b", m)]
            assert unexpected == []
        finally:
            browser.close()


def test_keys_page_stays_fast_with_100k_keys(gateway_factory: Any) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    n = 100_000
    keys = "\n".join(f"sk-bulk-{i:06d}-{'q' * 20}" for i in range(n))
    r = gw.api("POST", "/api/keys/batch", json={"provider": "openai", "input": keys}, timeout=120)
    assert r.status_code == 200 and r.json()["added"] == n

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(gw.url + "/admin/#/keys?provider=openai")
            page.fill("#login-password", gw.admin_password)
            page.click("#login-submit")
            expect(page.locator("#keys-range")).to_have_text(f"1{DASH}50 of 100,000")
            expect(page.locator("#keys-provider option:checked")).to_have_text("openai (100,000)")
            expect(page.locator(".keys-table tbody tr")).to_have_count(50)
            for button, text in (
                ("Last", f"99,951{DASH}100,000 of 100,000"),
                ("Previous", f"99,901{DASH}99,950 of 100,000"),
                ("First", f"1{DASH}50 of 100,000"),
            ):
                start = time.monotonic()
                page.click(f".pager button:has-text('{button}')")
                expect(page.locator("#keys-range")).to_have_text(text)
                assert time.monotonic() - start < 2.0, button
            start = time.monotonic()
            page.select_option("#keys-state", "active")
            expect(page.locator(".keys-table tbody tr")).to_have_count(50)
            expect(page.locator("#keys-range")).to_have_text(f"1{DASH}50 of 100,000")
            assert time.monotonic() - start < 2.0
            page.screenshot(path=str(SHOTS / "keys-100k-desktop.png"))
        finally:
            browser.close()


# --- details a person meets: long errors, key-less providers, language, phone widths ----------

LONG_ERROR = (
    "upstream said: "
    + XSS
    + " <b>bold</b> "
    + " ".join(f"detail-{i:03d}" for i in range(80))
    + " END-OF-ERROR"
)
ENGLISH_WORD = re.compile(r"\b(?!API\b)[A-Za-z]{4,}\b")  # a sentence left in English


@pytest.fixture
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def signed_in(browser: Browser, gw: Any, view: str = "dashboard", **ctx_kw: Any) -> Iterator[Page]:
    """A fresh browser context signed in to `gw`, showing `view`; page errors fail the test."""
    ctx = browser.new_context(**{"viewport": DESKTOP, **ctx_kw})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    try:
        page.goto(f"{gw.url}/admin/#/{view}")
        page.fill("#login-password", gw.admin_password)
        page.click("#login-submit")
        expect(page.locator("#shell")).to_be_visible()
        yield page
        assert problems == []
    finally:
        ctx.close()


def style(locator: Any, *names: str) -> dict[str, str]:
    """The computed values of CSS properties (camelCase names) of the one element found."""
    return locator.evaluate(
        "(e, names) => Object.fromEntries(names.map(n => [n, getComputedStyle(e)[n]]))",
        list(names),
    )


def chart_y_labels(figure: Any) -> list[str]:
    """The y-axis labels a uPlot chart (js/chart.js) drew last: its canvas holds them as pixels."""
    return figure.evaluate(
        "async e => (await import(new URL('js/chart.js', document.baseURI).href))"
        ".chartOf(e).yLabels"
    )


def dot_colours(scope: Any) -> list[str]:
    return scope.locator(".chip .dot").evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )


def test_long_request_error_opens_whole_as_text(gateway_factory: Any, chromium: Browser) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    now = time.time()
    entry = {
        "provider": "cerebras",
        "method": "POST",
        "path": "/cerebras/v1/chat/completions",
        "model": "m",
        "key_id": 1,
        "key": "sk-a…0001",
        "latency_ms": 12.5,
        "retries": 0,
    }
    listing = [
        {**entry, "ts": now, "status": 502, "error": LONG_ERROR},
        {**entry, "ts": now - 1, "status": 200, "error": ""},
    ]
    served: list[int] = []

    def requests_api(route: Any) -> None:
        served.append(1)
        route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"requests": listing})
        )

    for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        with signed_in(chromium, gw, "dashboard", viewport=viewport) as page:
            page.route("**/api/requests*", requests_api)
            goto_view(page, "requests")
            err = page.locator(".req-table .col-error .err-toggle")
            expect(err).to_have_count(1)
            # cut to one line at first, and only ever text: the markup in it never became HTML
            assert err.evaluate("e => e.scrollWidth > e.clientWidth + 1")
            assert err.text_content() == LONG_ERROR
            assert page.locator(".req-table img, .req-table b").count() == 0
            # the keyboard opens it: it is a button, Enter toggles it
            err.focus()
            page.keyboard.press("Enter")
            expect(err).to_have_attribute("aria-expanded", "true")
            assert err.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
            assert err.evaluate("e => e.scrollHeight <= e.clientHeight + 1")
            assert err.evaluate("e => e.getBoundingClientRect().height") > 60  # many lines
            # the whole text is on screen: the end of it lies inside the viewport's width
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
            # the live refresh keeps it open and keeps the focus on it
            seen = len(served)

            def refreshed(seen: int = seen) -> bool:
                page.wait_for_timeout(100)  # the page's route handler runs while playwright waits
                return len(served) > seen

            eventually(refreshed, 10, "the requests view refreshed", interval=0)
            page.wait_for_timeout(200)
            expect(err).to_have_attribute("aria-expanded", "true")
            assert err.evaluate("e => document.activeElement === e")
            page.screenshot(path=str(SHOTS / f"requests-error-{name}.png"), full_page=True)
            page.keyboard.press("Space")
            expect(err).to_have_attribute("aria-expanded", "false")
            assert err.evaluate("e => e.scrollWidth > e.clientWidth + 1")


def test_provider_without_usable_keys_is_never_green(
    gateway_factory: Any, mock: Any, chromium: Browser
) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    good, bad = "sk-ui-good-xxxxxxxxxxxx0001", "sk-ui-bad-xxxxxxxxxxxxx0002"
    assert (
        gw.api("POST", "/api/keys", json={"provider": "cerebras", "key": good}).status_code == 201
    )
    r = gw.api("POST", "/api/keys", json={"provider": "openai", "key": bad})
    assert r.status_code == 201
    mock.set_behavior(bad, status=401)
    assert gw.api("POST", f"/api/keys/{r.json()['id']}/test").json()["ok"] is False
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as c:
        assert (
            c.post(
                f"{gw.url}/cerebras/v1/chat/completions", headers=gw.auth(), json=chat
            ).status_code
            == 200
        )
        # groq has no key at all, but traffic, so it gets a card
        assert (
            c.post(f"{gw.url}/groq/v1/chat/completions", headers=gw.auth(), json=chat).status_code
            == 503
        )

    with signed_in(chromium, gw, "dashboard") as page:
        cards = {
            n: page.locator(f'.prov-card[data-provider="{n}"]')
            for n in ("cerebras", "openai", "groq")
        }
        for card in cards.values():
            expect(card).to_be_visible()
        expect(cards["openai"].locator(".chip-invalid")).to_contain_text("1 invalid")
        green = (
            cards["cerebras"]
            .locator(".chip-active .dot")
            .evaluate("e => getComputedStyle(e).backgroundColor")
        )
        red = (
            cards["openai"]
            .locator(".chip-invalid .dot")
            .evaluate("e => getComputedStyle(e).backgroundColor")
        )
        assert green != red
        # no keys: one neutral chip saying so, no green anywhere on the card
        expect(cards["groq"].locator(".chip")).to_have_count(1)
        expect(cards["groq"].locator(".chip")).to_have_text("no keys")
        assert green not in dot_colours(cards["groq"])
        # keys, but none usable: red for the invalid one, no green either
        assert red in dot_colours(cards["openai"]) and green not in dot_colours(cards["openai"])
        assert dot_colours(cards["cerebras"]).count(green) == 1
        # a sub-millisecond latency scale reads as distinct steps, not "1 ms, 0 ms, 0 ms"
        labels = chart_y_labels(cards["groq"].locator(".chart").nth(1))
        assert len(labels) == 3 and len(set(labels)) == len(labels), labels
        page.screenshot(path=str(SHOTS / "dashboard-keyless-desktop.png"), full_page=True)

        # the invalid key's last error, on the keys page, opens whole too
        page.goto(f"{gw.url}/admin/#/keys?provider=openai")
        last = page.locator(".keys-table .col-last_error .err-toggle")
        expect(last).to_have_text(re.compile(r"\S"))
        last.click()
        expect(last).to_have_attribute("aria-expanded", "true")

        page.goto(f"{gw.url}/admin/#/providers?all=1")
        row = page.locator('tr[data-provider="groq"]')
        expect(row.locator(".chip")).to_have_text("no keys")
        assert green not in dot_colours(row)
        assert green in dot_colours(page.locator('tr[data-provider="cerebras"]'))
        assert green not in dot_colours(page.locator('tr[data-provider="openai"]'))


def test_language_follows_the_browser_until_chosen(gateway_factory: Any, chromium: Browser) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    ctx = chromium.new_context(viewport=DESKTOP, locale="zh-CN")
    try:
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        page.goto(gw.url + "/admin/")
        # no saved choice: a zh-CN browser gets 中文 from the first screen on
        expect(page.locator(".login-title")).to_have_text("管理员登录")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        page.screenshot(path=str(SHOTS / "login-desktop-zh.png"))
        page.fill("#login-password", gw.admin_password)
        page.click("#login-submit")
        expect(page.locator('.nav-link[data-view="dashboard"]')).to_have_text("仪表盘")
        # a choice made on the page is kept and wins over the browser's language
        page.locator('.topbar [data-lang="en"]').click()
        expect(page.locator('.nav-link[data-view="dashboard"]')).to_have_text("Dashboard")
        page.reload()
        expect(page.locator('.nav-link[data-view="dashboard"]')).to_have_text("Dashboard")
        expect(page.locator("html")).to_have_attribute("lang", "en")
    finally:
        ctx.close()
    for locale, title in (
        ("en-US", "Admin sign-in"),
        ("de-DE", "Admin sign-in"),
        ("zh-TW", "管理员登录"),
    ):
        ctx = chromium.new_context(viewport=DESKTOP, locale=locale)
        try:
            page = ctx.new_page()
            page.goto(gw.url + "/admin/")
            expect(page.locator(".login-title")).to_have_text(title, timeout=TIMEOUT_MS)
        finally:
            ctx.close()


def test_server_errors_read_in_chinese(gateway_factory: Any, chromium: Browser) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    secret = "sk-ui-dup-xxxxxxxxxxxxx0001"
    ctx = chromium.new_context(viewport=DESKTOP)
    try:
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        page.goto(gw.url + "/admin/")
        page.locator('#login [data-lang="zh"]').click()
        # login: a wrong password, then the gateway's throttle (429 with Retry-After)
        page.fill("#login-password", "not-the-password")
        page.click("#login-submit")
        expect(page.locator("#login-message")).to_have_text("密码或令牌错误。")

        def throttled(route: Any) -> None:
            route.fulfill(
                status=429,
                headers={"retry-after": "30"},
                content_type="application/json",
                body='{"error": {"message": "too many failed attempts; retry in 30 s", "type": "rate_limit_error", "code": "too_many_attempts", "param": null}}',
            )

        page.route("**/api/session", throttled)
        page.fill("#login-password", "not-the-password")
        page.click("#login-submit")
        expect(page.locator("#login-message")).to_have_text("失败的尝试太多，请 30 秒后再试。")  # noqa: RUF001
        page.unroute("**/api/session")
        page.fill("#login-password", gw.admin_password)
        page.click("#login-submit")
        expect(page.locator("#shell")).to_be_visible()

        # keys: a duplicate (409), then an invalid key (400), both from the real server
        goto_view(page, "keys")
        page.locator("#keys-provider").select_option("cerebras")
        page.locator(".toolbar-actions .btn-primary").click()
        page.fill("#add-key", secret)
        page.click("#add-panel button[type=submit]")
        expect(page.locator(".keys-table tbody tr")).to_have_count(1)
        page.fill("#add-key", secret)
        page.click("#add-panel button[type=submit]")
        msg = page.locator("#add-panel .form-msg")
        expect(msg).to_have_text("cerebras 已经有这个密钥 sk-u…0001（编号 1）。")  # noqa: RUF001
        page.fill("#add-key", "short")
        page.click("#add-panel button[type=submit]")
        expect(msg).to_have_text(
            re.compile(r"^密钥无效：少于 \d+ 个字符，不是 API 密钥。$")  # noqa: RUF001
        )
        page.screenshot(path=str(SHOTS / "keys-error-desktop-zh.png"))

        # batch import: the per-key messages too
        page.locator(".toolbar-actions .btn").nth(1).click()
        page.fill(
            "#batch-input",
            f"tiny\n{secret}\nsk-ui-new-xxxxxxxxxxxxx0002\nsk-ui-new-xxxxxxxxxxxxx0002",
        )
        page.click("#batch-panel button[type=submit]")
        expect(page.locator(".batch-item")).to_have_count(4)
        for text in page.locator(".batch-msg").all_text_contents():
            assert not ENGLISH_WORD.search(text), text
        expect(page.locator('.batch-item[data-status="invalid"] .batch-msg')).to_have_text(
            re.compile(r"^少于 \d+ 个字符，不是 API 密钥。$")  # noqa: RUF001
        )
        page.click("#batch-panel .icon-btn")

        # not found: the key went away behind the page's back
        ids = key_ids(gw)
        row = page.locator(f'tr[data-id="{ids["0001"]}"]')
        assert gw.api("DELETE", f"/api/keys/{ids['0001']}").status_code == 200
        row.locator(".btn-toggle").click()
        expect(page.locator(".toast-error").last).to_have_text(
            f"没有编号为 {ids['0001']} 的密钥，它可能已被删除。"  # noqa: RUF001
        )

        # a provider field the server refuses, named by param; an unknown code keeps its text
        goto_view(page, "providers")
        page.locator('tr[data-provider="cerebras"] .btn-edit').click()
        answers = iter(
            [
                '{"error": {"message": "rps: must be ≥ 0, got -1", "type": "invalid_request_error", "code": "invalid_value", "param": "rps"}}',
                '{"error": {"message": "something new went wrong", "type": "invalid_request_error", "code": "brand_new_code", "param": null}}',
            ]
        )

        def refuse(route: Any) -> None:
            if route.request.method != "PATCH":
                route.continue_()
                return
            route.fulfill(status=400, content_type="application/json", body=next(answers))

        page.route("**/api/providers/cerebras", refuse)
        page.fill("#pf-rps", "2")
        page.click("#prov-save")
        expect(page.locator("#pf-rps-err")).to_have_text("每秒请求数（RPS）：必须 ≥ 0。")  # noqa: RUF001
        page.click("#prov-save")
        expect(page.locator("dialog .form-msg")).to_have_text(
            "网关返回 400：something new went wrong"  # noqa: RUF001
        )
    finally:
        ctx.close()


def test_phone_widths_never_overflow(gateway_factory: Any, chromium: Browser) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    gw.api("POST", "/api/keys", json={"provider": "cerebras", "key": "sk-ui-phone-xxxxxxxxxx0001"})
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as c:
        c.post(f"{gw.url}/cerebras/v1/chat/completions", headers=gw.auth(), json=chat)
        c.post(f"{gw.url}/groq/v1/chat/completions", headers=gw.auth(), json=chat)
    measure = """() => {
        const nav = document.querySelector('.nav');
        const links = [...nav.querySelectorAll('.nav-link')].map(a => a.getBoundingClientRect());
        return {
            page: document.documentElement.scrollWidth,
            inner: innerWidth,
            nav: nav.scrollWidth - nav.clientWidth,
            cut: links.filter(r => r.left < -0.5 || r.right > innerWidth + 0.5).length,
        };
    }"""
    for lang in ("en", "zh"):
        for width in (360, 390):
            viewport = {"width": width, "height": 780}
            with signed_in(
                chromium,
                gw,
                "dashboard",
                viewport=viewport,
                is_mobile=True,
                has_touch=True,
                locale="zh-CN" if lang == "zh" else "en-US",
            ) as page:
                for view in PAGES:
                    goto_view(page, view)
                    settle(page, view)
                    m = page.evaluate(measure)
                    where = f"{view} at {width} px ({lang})"
                    assert m["page"] <= m["inner"], (where, m)
                    # every navigation link is whole on screen: no hidden, scrolled-off tab
                    assert m["nav"] <= 0 and m["cut"] == 0, (where, m)
                    if width == 360:
                        shot = SHOTS / f"{view}-phone360{'' if lang == 'en' else '-zh'}.png"
                        page.screenshot(path=str(shot), full_page=True)


def test_connect_shows_a_native_gemini_snippet(
    gateway_factory: Any, mock: Any, chromium: Browser
) -> None:
    gw = gateway_factory()
    SHOTS.mkdir(parents=True, exist_ok=True)
    gemini_key = "AIza-ui-test-xxxxxxxxxxxx0001"
    assert (
        gw.api("POST", "/api/keys", json={"provider": "gemini", "key": gemini_key}).status_code
        == 201
    )
    with signed_in(chromium, gw, "connect?provider=gemini") as page:
        snippet = page.locator("#snippet-genai")
        expect(snippet).to_contain_text("from google import genai")
        text = snippet.text_content() or ""
        assert 'api_key="YOUR_GATEWAY_PASSWORD"' in text
        assert f'http_options={{"base_url": "{gw.url}/gemini"}}' in text
        assert "client.models.generate_content(" in text
        expect(page.locator(".snippets .snippet-title").first).to_have_text(
            re.compile("google-genai")
        )
        # beside the OpenAI-compatible ones, which stay
        expect(page.locator("#snippet-python")).to_contain_text(f'base_url="{gw.url}/gemini/v1"')
        page.screenshot(path=str(SHOTS / "connect-gemini-desktop.png"), full_page=True)
        # other providers do not get it
        page.select_option("#conn-provider", "cerebras")
        expect(page.locator("#snippet-genai")).to_have_count(0)
        page.select_option("#conn-provider", "gemini")
        page.locator('.topbar [data-lang="zh"]').click()
        expect(page.locator(".snippets .snippet-title").first).to_have_text(
            re.compile("Gemini 原生接口")
        )
        expect(page.locator("#snippet-genai")).to_contain_text('api_key="你的网关密码"')
        page.screenshot(path=str(SHOTS / "connect-gemini-desktop-zh.png"), full_page=True)
        page.locator('.topbar [data-lang="en"]').click()
        expect(page.locator("#snippet-genai")).to_contain_text("YOUR_GATEWAY_PASSWORD")

    # the snippet as shown runs: google-genai reaches the gateway, which injects the pool key
    code = text.replace("YOUR_GATEWAY_PASSWORD", gw.password).replace(
        "your-model-name", "gemini-ui"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    calls = [r for r in mock.records() if "generateContent" in r.path]
    assert calls, (done.stdout, done.stderr[-2000:])
    assert calls[-1].path.endswith("/models/gemini-ui:generateContent"), calls[-1].path
    assert calls[-1].key == gemini_key


def test_models_view_shows_and_edits_the_model_table(
    gateway_factory: Any, mock: Any, chromium: Browser
) -> None:
    groq_key = "gsk-ui-test-xxxxxxxx0001"
    gw = gateway_factory(
        env={"GROQ_API_KEYS": groq_key},
        config={"models": {"fast": {"strategy": "fallback", "targets": ["groq/a", "cerebras/b"]}}},
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    mock.set_behavior(groq_key, models=["llama-3.1-8b-instant"])
    assert httpx.get(f"{gw.url}/v1/models", headers=gw.auth(), timeout=10).status_code == 200
    with signed_in(chromium, gw, "models") as page:
        row = page.locator('.models-table tr[data-model="fast"]')
        expect(row).to_contain_text("groq/a")
        expect(row).to_contain_text("cerebras/b")
        expect(row).to_contain_text("config file")
        expect(page.locator('.provider-models[data-provider="groq"]')).to_contain_text(
            "groq/llama-3.1-8b-instant"
        )
        # the Connect view leads with the one-endpoint setup
        goto_view(page, "connect")
        expect(page.locator("#unified-base")).to_have_text(f"{gw.url}/v1")
        expect(page.locator("#snippet-unified")).to_contain_text('model="groq/')
        assert page.locator(".view .card").first.get_attribute("id") == "conn-unified"
        goto_view(page, "models")
        # a new group: the server's 400 shows in the form, then a fixed one is saved
        page.click("#models-add")
        page.fill("#mf-name", "mine")
        page.select_option("#mf-strategy", "fallback")
        page.fill("#mf-targets", "groq/a\nnosuch/b")
        page.click("#mf-save")
        expect(page.locator("#mf-error")).to_contain_text("unknown provider 'nosuch'")
        page.fill("#mf-targets", "groq/a\nfast")
        page.click("#mf-save")
        mine = page.locator('.models-table tr[data-model="mine"]')
        expect(mine).to_contain_text("cerebras/b")  # nested group resolved
        page.screenshot(path=str(SHOTS / "models-desktop.png"), full_page=True)
        routes = gw.api("GET", "/api/models").json()["routes"]
        assert routes["mine"]["spec"] == {"strategy": "fallback", "targets": ["groq/a", "fast"]}
        # in use at once
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            headers=gw.auth(),
            json={"model": "mine", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert r.headers["x-keygate-provider"] == "groq"
        mine.get_by_role("button", name="Delete: mine").click()
        page.locator("dialog .btn-danger").click()
        expect(mine).to_have_count(0)
        assert "mine" not in gw.api("GET", "/api/models").json()["routes"]


def test_translated_request_shows_its_family_pair(gateway_factory: Any, chromium: Browser) -> None:
    gw = gateway_factory()
    entry = {
        "ts": time.time(),
        "provider": "cerebras",
        "method": "POST",
        "model": "llama3.1-8b",
        "key_id": 1,
        "key": "sk-a…0001",
        "status": 200,
        "latency_ms": 9.5,
        "retries": 0,
        "error": "",
    }
    listing = [
        {**entry, "path": "/cerebras/v1/messages", "translated": "anthropic→openai"},
        {**entry, "path": "/cerebras/v1/chat/completions", "translated": ""},
    ]

    def requests_api(route: Any) -> None:
        route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"requests": listing})
        )

    for viewport in (DESKTOP, PHONE):
        with signed_in(chromium, gw, "dashboard", viewport=viewport) as page:
            page.route("**/api/requests*", requests_api)
            goto_view(page, "requests")
            badge = page.locator(".req-table .col-path .translated")
            expect(badge).to_have_count(1)
            expect(badge).to_have_text("anthropic→openai")
            assert badge.get_attribute("title")
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def test_quota_gauges_on_the_keys_view_and_the_provider_card(
    gateway_factory: Any, mock: Any, chromium: Browser
) -> None:
    config = {"providers": {"cerebras": {"key_rpd": 10, "key_tpm": 50_000}}}
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": "sk-ui-quota-xxxxxxxxxxx0001"}, config=config)
    proxy_burst(gw, 3)
    with signed_in(chromium, gw, "dashboard") as page:
        card = page.locator('.prov-card[data-provider="cerebras"]')
        rpd = card.locator('.quota-meter[data-window="rpd"]')
        expect(rpd.locator(".meter-value")).to_have_text("3 / 10")
        expect(rpd.locator(".meter-sub")).to_contain_text("resets in")
        expect(card.locator('.quota-meter[data-window="rph"]')).to_have_count(0)
        # the gauges are styled: a two-column grid of meters on the card, the reset line small
        # and muted, the track a thin bar under the numbers (not the page's plain block text)
        meters = style(card.locator(".quota-meters"), "display", "gridTemplateColumns")
        assert meters["display"] == "grid"
        assert len(meters["gridTemplateColumns"].split()) == 2, meters
        sub = style(rpd.locator(".meter-sub"), "fontSize", "color")
        body = style(page.locator("body"), "fontSize", "color")
        assert sub["fontSize"] == "11.5px" and sub["color"] != body["color"], (sub, body)
        assert style(rpd.locator(".meter-track"), "height")["height"] == "6px"
        page.goto(f"{gw.url}/admin/#/keys?provider=cerebras")
        cell = page.locator(".keys-table tbody tr .col-quota")
        expect(cell.locator('.quota-meter[data-window="rpd"] .meter-value')).to_have_text("3 / 10")
        expect(cell.locator('.quota-meter[data-window="tpm"]')).to_have_count(1)
        compact = cell.locator('.quota-meter[data-window="rpd"]')
        assert style(cell.locator(".quota-meters.is-compact"), "display")["display"] == "grid"
        assert style(cell.locator(".quota-cell"), "display")["display"] == "inline-flex"
        assert style(compact.locator(".meter-track"), "height")["height"] == "4px"
        assert style(compact.locator(".meter-head"), "fontSize")["fontSize"] == "11.5px"
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "keys-quota-desktop.png"), full_page=True)
        # the key's own limits, edited in a dialog: the gauge follows, the server has them
        cell.locator(".btn-limits").click()
        form = page.locator("dialog .limits-form")
        grid = style(form.locator(".limits-grid"), "display", "gridTemplateColumns")
        assert grid["display"] == "grid" and len(grid["gridTemplateColumns"].split()) == 2, grid
        form.locator('input[name="rpd"]').fill("4")
        form.locator('input[name="rph"]').fill("50")
        form.locator('button[type="submit"]').click()
        expect(cell.locator('.quota-meter[data-window="rpd"] .meter-value')).to_have_text("3 / 4")
        expect(cell.locator('.quota-meter[data-window="rph"] .meter-value')).to_have_text("3 / 50")
        (key,) = gw.api("GET", "/api/keys").json()["keys"]
        assert (key["rpd"], key["rph"], key["tpm"]) == (4, 50, 0)


def test_clients_view_create_copy_usage_disable(
    gateway_factory: Any, mock: Any, chromium: Browser
) -> None:
    """Create a client, copy its key (shown once), see its usage rise after requests made with
    that key, disable it (the key is then refused)."""
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": "sk-ui-clients-xxxxxxxx0001"})
    SHOTS.mkdir(parents=True, exist_ok=True)
    with signed_in(chromium, gw, "clients") as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        settle(page, "clients")
        page.screenshot(path=str(SHOTS / "clients-empty-desktop.png"), full_page=True)
        page.click("#client-add")
        page.fill("#client-name", f"ui team {XSS}")
        page.fill("#client-rpd", "100")
        page.fill("#client-models", "cerebras/*")
        page.screenshot(path=str(SHOTS / "clients-create-desktop.png"))
        page.click("#client-create")
        key_box = page.locator("#client-new-key")
        expect(key_box).to_be_visible()
        key = key_box.input_value()
        assert re.fullmatch(r"kgc-[A-Za-z0-9_-]{40}", key), key
        page.screenshot(path=str(SHOTS / "clients-key-desktop.png"))
        page.click("#client-copy-key")
        expect(page.locator(".toast-ok")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == key
        page.click("#client-key-done")
        row = page.locator(".clients-table tbody tr").first
        expect(row.locator(".client-name")).to_have_text(f"ui team {XSS}")  # text, not HTML
        expect(row.locator(".client-today")).to_have_text("0")
        assert key not in page.content()  # shown once: gone with its dialog
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30) as c:
            for _ in range(3):
                r = c.post(
                    f"{gw.url}/cerebras/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json=chat,
                )
                assert r.status_code == 200, r.text
        expect(row.locator(".client-today")).to_have_text("3", timeout=TIMEOUT_MS)
        expect(row.locator(".client-spark")).to_have_attribute("data-total", "3")
        page.screenshot(path=str(SHOTS / "clients-desktop.png"), full_page=True)
        goto_view(page, "requests")  # recent requests name the client
        expect(page.locator(".req-table .req-client").first).to_have_text(f"ui team {XSS}")
        goto_view(page, "clients")
        row = page.locator(".clients-table tbody tr").first
        expect(row.locator(".client-today")).to_have_text("3")
        row.locator(".btn-toggle").click()
        expect(row.locator(".client-status")).to_have_text("disabled")
        with httpx.Client(timeout=30) as c:
            r = c.post(
                f"{gw.url}/cerebras/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json=chat,
            )
        assert r.status_code == 401
        page.screenshot(path=str(SHOTS / "clients-disabled-desktop.png"), full_page=True)
        page.set_viewport_size(PHONE)
        page.screenshot(path=str(SHOTS / "clients-phone.png"), full_page=True)
