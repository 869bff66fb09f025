"""The admin page at a phone's, a laptop's and a wide desktop's width (360, 1366 and 1920 px), in
English and 中文, against one gateway seeded with keys of several providers, traffic, a client
and a model group (issue 24, item 14).

Every view: the page never scrolls sideways; every table's actions (Edit, Test, Delete, …) are on
screen at 1366 and 1920 px without scrolling, and at 360 px on screen or inside the table's own
sideways-scrolling box; at 1366 and 1920 px every column of every table shows (the requests'
Path and Error too). Also: the keys view lists every provider's keys at once; a compact quota
gauge keeps its window's name apart from its numbers; the clients' "last hour" and the
dashboard's charts are drawn by uPlot, and a latency line joins points seconds apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from test_admin_ui import ARGS, CHROMIUM, SHOTS, TIMEOUT_MS, goto_view, settle

from harness import Gateway, eventually, start_gateway

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]

WIDTHS = (360, 1366, 1920)
LANGS = ("en", "zh")
LOCALES = {"en": "en-US", "zh": "zh-CN"}
# every view, with the variants that draw the widest tables
VIEWS = (
    ("dashboard", "dashboard"),
    ("keys", "keys?provider=cerebras"),
    ("keys", "keys?provider=*"),
    ("providers", "providers?all=1"),
    ("models", "models"),
    ("clients", "clients"),
    ("requests", "requests"),
    ("connect", "connect"),
)
LONG_LABEL = "shared evaluation account of the platform team"
LONG_ERROR = "invalid api key: " + " ".join(f"reason-{i:02d}" for i in range(40))
KEYS = {
    "cerebras": [f"sk-layout-cerebras-{'x' * 16}{i:04d}" for i in range(1, 4)],
    "groq": [f"gsk-layout-groq-{'y' * 16}{i:04d}" for i in range(1, 3)],
    "openai": [f"sk-layout-openai-{'z' * 16}0001"],
}
CHAT = {"model": "llama-3.3-70b-versatile", "messages": [{"role": "user", "content": "hi"}]}


# --- one seeded gateway for the whole module ----------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, mock_session: Any) -> Iterator[Gateway]:
    mock_session.reset()
    config = {
        "providers": {
            "cerebras": {
                "key_tpm": 1_000_000,
                "key_rpd": 1_000,
                "default_model": "llama-3.3-70b-versatile",
                "queue": 10_000,
            },
            "groq": {"default_model": "meta-llama/llama-4-scout-17b-16e-instruct", "rps": 12.5},
            # a custom provider with a long name and address
            "company-internal-gateway": {"base_url": f"{mock_session.url}/compat/openai/v1"},
        },
        "models": {
            "fast": {
                "strategy": "fallback",
                "targets": ["cerebras/llama-3.3-70b-versatile", "groq/llama-3.1-8b-instant"],
            }
        },
    }
    gw = start_gateway(
        tmp_path_factory.mktemp("layout"),
        mock_session,
        config=config,
        env={"KEYGATE_FLUSH_INTERVAL_MS": "200"},
    )
    try:
        seed(gw, mock_session)
        yield gw
    finally:
        gw.stop()
        mock_session.reset()


def seed(gw: Gateway, mock: Any) -> None:
    for provider, secrets in KEYS.items():
        for i, secret in enumerate(secrets):
            doc = {"provider": provider, "key": secret}
            if i == 0:
                doc["label"] = LONG_LABEL
            assert gw.api("POST", "/api/keys", json=doc).status_code == 201
    bad = KEYS["openai"][0]
    mock.set_behavior(
        bad,
        status=401,
        body=json.dumps({"error": {"message": LONG_ERROR, "type": "invalid_request_error"}}),
    )
    created = gw.api(
        "POST",
        "/api/clients",
        json={"name": "evaluation pipeline", "rpd": 1000, "models": ["cerebras/*", "groq/*"]},
    )
    assert created.status_code == 201, created.text
    client_key = created.json()["key"]
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for _ in range(3):
            r = c.post("/cerebras/v1/chat/completions", headers=gw.auth(), json=CHAT)
            assert r.status_code == 200, r.text
        # one long prompt: a key's tokens this minute run to five digits of a seven-digit limit
        big = {**CHAT, "messages": [{"role": "user", "content": "word " * 50_000}]}
        r = c.post("/cerebras/v1/chat/completions", headers=gw.auth(), json=big)
        assert r.status_code == 200, r.text
        r = c.post("/groq/v1/chat/completions", headers=gw.auth(), json=CHAT)
        assert r.status_code == 200, r.text
        c.post("/openai/v1/chat/completions", headers=gw.auth(), json=CHAT)  # the 401 key
        r = c.post("/v1/chat/completions", headers=gw.auth(), json={**CHAT, "model": "fast"})
        assert r.status_code == 200, r.text
        c.post(  # an Anthropic-shaped request to an OpenAI-shaped provider: translated
            "/cerebras/v1/messages",
            headers={**gw.auth(), "anthropic-version": "2023-06-01"},
            json={"model": "llama-3.3-70b-versatile", "max_tokens": 16, **CHAT},
        )
        for _ in range(3):
            r = c.post(
                "/cerebras/v1/chat/completions",
                headers={"Authorization": f"Bearer {client_key}"},
                json=CHAT,
            )
            assert r.status_code == 200, r.text

    def logged() -> bool:
        listing = gw.api("GET", "/api/requests", params={"limit": 50}).json()["requests"]
        return len(listing) >= 10 and any(r.get("error") for r in listing)

    eventually(logged, 10, "the requests reached the log")

    def used() -> bool:
        (client,) = gw.api("GET", "/api/clients").json()["clients"]
        return client["usage"]["today"]["requests"] >= 3

    eventually(used, 10, "the client's usage was counted")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Browser, gw: Gateway, width: int, lang: str, view: str) -> Page:
    phone = width < 720
    ctx = browser.new_context(
        viewport={"width": width, "height": 780 if phone else 900},
        is_mobile=phone,
        has_touch=phone,
        locale=LOCALES[lang],
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{gw.url}/admin/#/{view}")
    page.fill("#login-password", gw.admin_password)
    page.click("#login-submit")
    expect(page.locator("#shell")).to_be_visible()
    page.problems = problems  # type: ignore[attr-defined]
    return page


def close(page: Page) -> None:
    problems = page.problems  # type: ignore[attr-defined]
    page.context.close()
    assert problems == []


# --- what is on screen ----------------------------------------------------------------------------

MEASURE = """() => {
    const vw = innerWidth;
    const clips = (el) => ['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(el).overflowX);
    const shown = (el) => el.getClientRects().length > 0 && el.getBoundingClientRect().width > 0;
    const name = (el) => (el.className || el.tagName).toString().trim() + ' ' + (el.textContent || '').trim().slice(0, 24);
    const out = { page: document.documentElement.scrollWidth, inner: vw, tables: [] };
    for (const table of document.querySelectorAll('#view table')) {
        if (!shown(table)) continue;
        let box = table.parentElement;
        while (box && box !== document.body && !clips(box)) box = box.parentElement;
        if (box === document.body) box = null;
        const r = box ? box.getBoundingClientRect() : { left: 0, right: vw };
        const scrolls = !!box && ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
        const left = Math.max(0, r.left);
        const right = Math.min(vw, r.right);
        const seen = (e) => e.left >= left - 0.5 && e.right <= right + 0.5;
        const reach = (e) => scrolls && r.left >= -0.5 && r.right <= vw + 0.5
            && e.right - r.left + box.scrollLeft <= box.scrollWidth + 0.5;
        const actions = [];
        const cells = table.querySelectorAll(
            'td.col-actions, td.col-edit, td.col-copy, th.col-actions, th.col-edit');
        for (const cell of cells) {
            const els = cell.tagName === 'TH' ? [cell] : [...cell.querySelectorAll('button, a')];
            for (const el of els) {
                if (!shown(el)) continue;
                const e = el.getBoundingClientRect();
                actions.push({ what: name(el), visible: seen(e), reachable: seen(e) || reach(e),
                               left: Math.round(e.left), right: Math.round(e.right) });
            }
        }
        const cut = [...table.querySelectorAll('thead th')].filter(shown)
            .filter((th) => !seen(th.getBoundingClientRect())).map(name);
        out.tables.push({ table: table.className, width: Math.round(table.getBoundingClientRect().width),
                          box: Math.round(right - left), actions, cut });
    }
    return out;
}"""


def wait_ready(page: Page, view: str) -> None:
    settle(page, view)
    if view == "dashboard":  # charts take the card's width once it is laid out
        page.wait_for_selector(".prov-card .chart", timeout=TIMEOUT_MS)


def test_every_view_fits_every_width(seeded: Gateway, browser: Browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for lang in LANGS:
        for width in WIDTHS:
            page = open_page(browser, seeded, width, lang, "dashboard")
            try:
                for view, where in VIEWS:
                    page.goto(f"{seeded.url}/admin/#/{where}")
                    expect(page.locator(f'.nav-link[data-view="{view}"]')).to_have_attribute(
                        "aria-current", "page"
                    )
                    wait_ready(page, view)
                    m = page.evaluate(MEASURE)
                    at = f"{where} at {width} px ({lang})"
                    if m["page"] > m["inner"]:
                        failures.append(f"{at}: the page is {m['page']} px wide")
                    for t in m["tables"]:
                        key = "visible" if width >= 1366 else "reachable"
                        off = [a for a in t["actions"] if not a[key]]
                        if off:
                            failures.append(
                                f"{at}: {t['table']}: {len(off)} of {len(t['actions'])}"
                                f" actions not {key}, e.g. {off[-1]}"
                            )
                        if width >= 1366 and t["cut"]:
                            failures.append(
                                f"{at}: {t['table']} is {t['width']} px in a {t['box']} px box;"
                                f" columns off screen: {t['cut']}"
                            )
                    tag = where.replace("?", "-").replace("=", "-").replace("*", "all")
                    shot = SHOTS / f"layout-{tag}-{width}-{lang}.png"
                    page.screenshot(path=str(shot), full_page=True)
            finally:
                close(page)
    assert failures == [], "\n".join(failures)


def test_keys_view_lists_every_provider_at_once(seeded: Gateway, browser: Browser) -> None:
    total = sum(len(v) for v in KEYS.values())
    for lang, label in (("en", "All providers"), ("zh", "全部服务商")):
        page = open_page(browser, seeded, 1366, lang, "keys")
        try:
            settle(page, "keys")
            option = page.locator('#keys-provider option[value="*"]')
            expect(option).to_have_text(f"{label} ({total})")
            page.select_option("#keys-provider", "*")
            rows = page.locator(".keys-table tbody tr")
            expect(rows).to_have_count(total)
            expect(page.locator("#keys-range")).to_contain_text(str(total))
            shown = page.locator(".keys-table tbody td.col-provider").all_text_contents()
            assert sorted(shown) == sorted(p for p, v in KEYS.items() for _ in v), shown
            assert "provider=*" in page.url or "provider=%2A" in page.url, page.url
            # the choice survives a reload, and the state filter works across providers
            page.reload()
            expect(rows).to_have_count(total)
            expect(page.locator("#keys-provider")).to_have_value("*")
            page.select_option("#keys-state", "invalid")
            expect(rows).to_have_count(1)
            expect(rows.locator("td.col-provider")).to_have_text("openai")
        finally:
            close(page)
    # adding a key while every provider shows: the panel asks which provider it is for
    page = open_page(browser, seeded, 1366, "en", "keys?provider=*")
    try:
        rows = page.locator(".keys-table tbody tr")
        expect(rows).to_have_count(total)
        expect(page.locator("#add-provider")).to_be_hidden()
        page.click("button:has-text('Add key')")
        page.select_option("#add-provider", "groq")
        page.fill("#add-key", "gsk-layout-added-yyyyyyyyyyyy0009")
        page.click("#add-panel button[type=submit]")
        expect(rows).to_have_count(total + 1)
        added = page.locator(".keys-table tbody tr", has_text="0009")
        expect(added.locator("td.col-provider")).to_have_text("groq")
        key_id = added.get_attribute("data-id")
        # one provider: no Provider column, no provider choice in the panel
        page.select_option("#keys-provider", "groq")
        expect(rows).to_have_count(3)
        expect(rows.first.locator("td.col-provider")).to_be_hidden()
        expect(page.locator("#add-provider")).to_be_hidden()
    finally:
        close(page)
    assert seeded.api("DELETE", f"/api/keys/{key_id}").status_code == 200


GAUGE_GAP = """() => [...document.querySelectorAll('.keys-table .quota-meter .meter-head')]
    .filter((h) => h.getClientRects().length)
    .map((h) => {
        const a = h.querySelector('.meter-label').getBoundingClientRect();
        const b = h.querySelector('.meter-value').getBoundingClientRect();
        return { text: h.textContent, gap: Math.round(b.left - a.right),
                 below: b.top >= a.bottom - 1 };
    })"""


def test_quota_gauges_keep_label_and_numbers_apart(seeded: Gateway, browser: Browser) -> None:
    for lang in LANGS:
        for width in WIDTHS:
            page = open_page(browser, seeded, width, lang, "keys?provider=cerebras")
            try:
                settle(page, "keys")
                heads = page.evaluate(GAUGE_GAP)
                assert len(heads) >= 6, heads  # rpd and tpm for each of three keys
                assert any(h["text"].startswith("tpm") for h in heads), heads
                assert any("/ 1,000,000" in h["text"] for h in heads), heads
                for h in heads:
                    assert h["below"] or h["gap"] >= 4, (width, lang, h)
            finally:
                close(page)


PAINTED = """(canvas) => {
    const g = canvas.getContext('2d');
    const { data, width, height } = g.getImageData(0, 0, canvas.width, canvas.height);
    let cols = 0;
    for (let x = 0; x < width; x++) {
        for (let y = 0; y < height; y++) {
            if (data[(y * width + x) * 4 + 3] > 0) { cols++; break; }
        }
    }
    return { cols, width };
}"""


def test_clients_last_hour_is_a_real_chart(seeded: Gateway, browser: Browser) -> None:
    for width in (360, 1366):
        page = open_page(browser, seeded, width, "en", "clients")
        try:
            settle(page, "clients")
            spark = page.locator(".clients-table tbody tr .client-spark").first
            expect(spark).to_have_attribute("data-total", "3")
            canvas = spark.locator(".uplot canvas")
            expect(canvas).to_have_count(1)
            box = canvas.bounding_box()
            assert box and box["width"] >= 100 and box["height"] >= 24, box
            # drawn across the hour (a baseline and the busy minute), not one hair-thin bar
            painted = canvas.evaluate(PAINTED)
            assert painted["cols"] > painted["width"] / 2, painted
        finally:
            close(page)


def sparse_stats(now: float) -> dict[str, Any]:
    """/api/stats with one provider whose latency exists only in three seconds, 40 s apart."""
    end = int(now)
    busy = {end - 90, end - 50, end - 10}
    timeline = [
        {
            "t": t,
            "rps": 1 if t in busy else 0,
            "errors": 0,
            "p50": 40.0 if t in busy else None,
            "p95": 80.0 if t in busy else None,
        }
        for t in range(end - 119, end + 1)
    ]
    keys = {"total": 1, "active": 1, "cooling": 0, "invalid": 0, "exhausted": 0, "disabled": 0}
    prov = {
        "keys": keys,
        "requests": 3,
        "ok": 3,
        "err_4xx": 0,
        "err_5xx": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "in_flight": 0,
        "max_conn": 10,
        "queued": 0,
        "queue": 100,
        "timeline": timeline,
    }
    return {
        "uptime_s": 100,
        "since": now - 100,
        "totals": {k: v for k, v in prov.items() if k != "timeline"},
        "providers": {"cerebras": prov},
    }


LINE_COLUMNS = """(canvas, css) => {
    const hex = getComputedStyle(document.documentElement).getPropertyValue(css).trim();
    const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const g = canvas.getContext('2d');
    const { data, width, height } = g.getImageData(0, 0, canvas.width, canvas.height);
    let cols = 0;
    for (let x = 0; x < width; x++) {
        for (let y = 0; y < height; y++) {
            const i = (y * width + x) * 4;
            const d = Math.hypot(data[i] - want[0], data[i + 1] - want[1], data[i + 2] - want[2]);
            if (data[i + 3] > 160 && d < 60) { cols++; break; }
        }
    }
    return { cols, width };
}"""


def test_latency_chart_joins_sparse_points(seeded: Gateway, browser: Browser) -> None:
    page = open_page(browser, seeded, 1366, "en", "keys")
    try:
        page.route(
            "**/api/stats",
            lambda route: route.fulfill(
                status=200,
                content_type="application/json",
                body=json.dumps(sparse_stats(time.time())),
            ),
        )
        goto_view(page, "dashboard")
        card = page.locator('.prov-card[data-provider="cerebras"]')
        charts = card.locator(".chart")
        expect(charts).to_have_count(2)
        for i in range(2):
            expect(charts.nth(i).locator(".uplot canvas")).to_have_count(1)
        latency = charts.nth(1).locator(".uplot canvas")
        page.wait_for_timeout(300)  # the first poll's data drawn
        # three points 40 s apart in a 120 s window: the p50 line runs from the first to the
        # last, about two thirds of the plot's width, not three dots
        for css in ("--c-p50", "--c-p95"):
            drawn = latency.evaluate(LINE_COLUMNS, css)
            assert drawn["cols"] > drawn["width"] * 0.5, (css, drawn)
        page.screenshot(path=str(SHOTS / "dashboard-sparse-latency.png"), full_page=True)
    finally:
        close(page)


def test_vendored_uplot_is_served_with_its_licence() -> None:
    static = Path(__file__).resolve().parents[2] / "src/keygate/admin/ui/static"
    vendor = static / "vendor" / "uplot"
    js = (vendor / "uPlot.iife.min.js").read_text(encoding="utf-8")
    assert js.startswith("/*! https://github.com/leeoniya/uPlot (v1.6."), js[:80]
    assert (vendor / "uPlot.min.css").is_file()
    assert "MIT License" in (vendor / "LICENSE").read_text(encoding="utf-8")
    html = (static / "index.html").read_text(encoding="utf-8")
    assert 'src="vendor/uplot/uPlot.iife.min.js"' in html
    assert 'href="vendor/uplot/uPlot.min.css"' in html
