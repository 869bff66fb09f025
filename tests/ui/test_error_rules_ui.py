"""The providers view shows a provider's error rules (SPEC §15) in its edit dialog, refuses a
list that is no JSON list in the page, shows the server's 400 (naming the rule) on the field,
and saves a good list that the gateway then shows; driven in a real browser."""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import Browser, expect
from test_admin_ui import chromium, pytestmark, signed_in  # noqa: F401 (fixture, marks)

RULE = {"status": 429, "match": "(?i)per day", "action": "cool", "cool_s": 3600}


def gemini(gw: Any) -> dict[str, Any]:
    providers = gw.api("GET", "/api/providers").json()["providers"]
    return next(p for p in providers if p["name"] == "gemini")


def test_providers_view_shows_and_edits_error_rules(
    gateway_factory: Any,
    mock: Any,
    chromium: Browser,  # noqa: F811
) -> None:
    gw = gateway_factory(env={"GEMINI_API_KEYS": "AIza-ui-rules-xxxxxxxx0001"})
    with signed_in(chromium, gw, "providers") as page:
        page.goto(f"{gw.url}/admin/#/providers")
        page.locator('tr[data-provider="gemini"] .btn-edit').click()
        summary = page.locator("#prov-rules summary")
        expect(summary).to_have_text("Error rules (2)")  # folded: the number of rules
        summary.click()
        rules = page.locator("dialog textarea#pf-error_rules")
        expect(rules).to_have_value(
            '[\n  {"status":400,"match":"API_KEY_INVALID","action":"invalid"},\n'
            '  {"status":503,"action":"provider"}\n]'
        )
        rules.fill('{"status": 400}')  # not a list: refused in the page
        page.click("#prov-save")
        expect(page.locator("#pf-error_rules-err")).to_be_visible()
        rules.fill('[{"status": 400, "action": "ban"}]')  # the server's check names the rule
        page.click("#prov-save")
        expect(page.locator("#pf-error_rules-err")).to_contain_text("error_rules[0].action")
        assert len(gemini(gw)["error_rules"]) == 2, "nothing was applied"
        rules.fill(json.dumps([RULE]))
        page.click("#prov-save")
        expect(page.locator("dialog .prov-form")).to_have_count(0)
        assert gemini(gw)["error_rules"] == [RULE]
