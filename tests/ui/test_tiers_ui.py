"""The keys view shows each key's tier and weight (SPEC §15), groups the keys by tier (lowest,
spent first, on top) and edits both in the key's limits dialog; driven in a real browser."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Browser, expect
from test_admin_ui import chromium, pytestmark, signed_in  # noqa: F401 (fixture, marks)

PAID = "sk-ui-tier-paid-xxxxxx0001"
FREE = "sk-ui-tier-free-xxxxxx0002"
HEAVY = "sk-ui-tier-heavy-xxxxx0003"


def test_keys_view_groups_by_tier_and_edits_tier_and_weight(
    gateway_factory: Any,
    mock: Any,
    chromium: Browser,  # noqa: F811
) -> None:
    keys = f"{PAID}|tier=1,{FREE},{HEAVY}|weight=2"
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": keys})
    paid_id = next(
        k["id"] for k in gw.api("GET", "/api/keys").json()["keys"] if k["masked"].endswith("0001")
    )
    with signed_in(chromium, gw, "keys") as page:
        page.goto(f"{gw.url}/admin/#/keys?provider=cerebras")
        rows = page.locator(".keys-table tbody tr")
        expect(rows).to_have_count(3)
        # newest first inside a tier, the paid key (tier 1) last, its group marked
        expect(rows.locator(".key-rank")).to_have_text(
            ["tier 0 · weight 2", "tier 0 · weight 1", "tier 1 · weight 1"]
        )
        expect(rows.nth(2)).to_have_class(re.compile(r"\btier-start\b"))
        expect(rows.nth(2)).to_have_attribute("data-id", str(paid_id))
        expect(rows.nth(1)).not_to_have_class(re.compile(r"\btier-start\b"))
        paid = page.locator(f'.keys-table tbody tr[data-id="{paid_id}"]')
        paid.locator(".btn-limits").click()
        form = page.locator("dialog .limits-form")
        form.locator('input[name="weight"]').fill("0")
        form.locator('button[type="submit"]').click()
        expect(form).to_be_visible()  # refused in the page: 1 to 100
        form.locator('input[name="weight"]').fill("5")
        form.locator('input[name="tier"]').fill("0")
        form.locator('button[type="submit"]').click()
        expect(form).to_have_count(0)
        expect(paid.locator(".key-rank")).to_have_text("tier 0 · weight 5")
        # one tier now: no group mark left
        expect(rows.nth(2)).not_to_have_class(re.compile(r"\btier-start\b"))
        key = next(k for k in gw.api("GET", "/api/keys").json()["keys"] if k["id"] == paid_id)
        assert (key["tier"], key["weight"]) == (0, 5)
