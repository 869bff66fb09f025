"""The gateway's parts, each with one job: run-time provider settings applied one way (start,
admin API, reload, CLI), key views written once for entries and records, key operations shared
by the admin API and the CLI, and the admin API loaded only when first asked for. (The layers
themselves are import-linter's contracts: test_static_checks.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import wait_log

PRIVATE_BASE = "http://169.254.10.10:9"  # link-local: stored and shown, never contacted here


def _base_url(gw: Any, name: str) -> str:
    doc = gw.api("GET", "/api/providers").json()
    return next(p["base_url"] for p in doc["providers"] if p["name"] == name)


def test_reload_keeps_a_private_upstream_set_at_run_time(gateway_factory: Any) -> None:
    """A reload applies the stored overrides with the rules the server started with: an admin
    -set link-local base (allowed by KEYGATE_ALLOW_PRIVATE_UPSTREAMS) is not dropped for the
    file's."""
    gw = gateway_factory(
        config={"providers": {"groq": {"rps": 2}}},
        env={"KEYGATE_ALLOW_PRIVATE_UPSTREAMS": "1"},
    )
    r = gw.api("PATCH", "/api/providers/groq", json={"base_url": PRIVATE_BASE})
    assert r.status_code == 200, r.text
    assert _base_url(gw, "groq") == PRIVATE_BASE
    mark = len(gw.log())
    gw.proc.send_signal(signal.SIGHUP)
    tail = wait_log(gw, r"reload: .* re-read, \d+ change", mark)
    assert "providers.groq.base_url" not in tail
    assert _base_url(gw, "groq") == PRIVATE_BASE


# --- in process -------------------------------------------------------------------------------
def test_overrides_apply_one_way() -> None:
    from keygate.config.overrides import apply_stored, clean_fields
    from keygate.config.settings import load_settings

    providers = load_settings({}).providers
    touched = apply_stored(
        providers,
        {
            "groq": {"rps": "7", "base_url": PRIVATE_BASE, "nonsense": 1},
            "cerebras": {"burst": -5},  # refused by today's bounds: skipped, not fatal
            "gone": {"rps": 1},
        },
        allow_private=False,
    )
    assert touched == ["groq", "cerebras"]
    assert providers["groq"].rps == 7.0  # coerced, as the admin API would have
    assert providers["groq"].base_url != PRIVATE_BASE  # private not allowed here
    assert not hasattr(providers["groq"], "nonsense")
    assert providers["cerebras"].burst > 0
    apply_stored(providers, {"groq": {"base_url": PRIVATE_BASE}}, allow_private=True)
    assert providers["groq"].base_url == PRIVATE_BASE
    with pytest.raises(ValueError, match=r"^rps: "):
        clean_fields({"rps": "fast"}, allow_private=False)


def test_key_view_is_the_same_for_an_entry_and_a_record() -> None:
    from keygate.control.keypool import KeyEntry, mask
    from keygate.runtime.views import key_view
    from keygate.store.base import KeyRecord

    now = time.time()
    secret = "sk-view-abcdefghijklmnop"
    common: dict[str, Any] = {
        "label": "team",
        "status": "cooling",
        "until": now - 1,  # time is up: shown active
        "last_error": "429 rate limited",
        "source": "api",
        "created_at": now - 100,
        "rpm": 3,
        "max_conn": 2,
        "use_count": 5,
        "last_used": now - 10,
    }
    entry = KeyEntry(11, "groq", secret, **common)
    entry.ok, entry.err_4xx, entry.tokens_in = 4, 1, 99
    rec = KeyRecord(11, "groq", secret, mask(secret), ok=4, err_4xx=1, tokens_in=99, **common)
    a, b = key_view(entry, now), key_view(rec, now)
    assert a == b
    assert a["status"] == "active" and a["cooldown_until"] is None
    assert secret not in repr(a)
    entry.until = rec.until = now + 60
    assert (
        key_view(entry, now)["cooldown_until"] == now + 60 == key_view(rec, now)["cooldown_until"]
    )


def test_unflushed_counters() -> None:
    from keygate.control.keypool import KeyEntry
    from keygate.runtime.counters import unflushed

    entry = KeyEntry(1, "groq", "sk-count-abcdefghijklmnop", use_count=3)
    assert unflushed(entry) == (0, 0, 0, 0, 0, 0)
    entry.use_count, entry.ok, entry.tokens_out = 5, 2, 40
    assert unflushed(entry) == (2, 2, 0, 0, 0, 40)


async def test_key_operations_without_a_running_gateway(tmp_path: Path) -> None:
    """What the CLI runs: the same operations as the admin API, on the store alone."""
    from keygate.runtime.keyops import Duplicate, KeyOps
    from keygate.store import create_store

    store = create_store(f"sqlite:///{tmp_path / 'k.db'}")
    await store.open()
    try:
        ops = KeyOps(store)
        first = await ops.add("groq", "sk-ops-abcdefghijklmnop0001", "one", "cli")
        with pytest.raises(Duplicate) as dup:
            await ops.add("groq", "  sk-ops-abcdefghijklmnop0001 ", "", "cli")
        assert dup.value.existing == first.id
        assert "sk-ops-abcdefghijklmnop0001" not in str(dup.value)
        done = await ops.import_(
            "groq", ["sk-ops-abcdefghijklmnop0002", "sk-ops-abcdefghijklmnop0001", "a b"], "cli"
        )
        assert done.counts == {"added": 1, "duplicate": 1, "invalid": 1}
        keys, total = await ops.list("groq", None, None, 10, 0, time.time())
        assert total == 2 and [k.id for k in keys] == sorted((k.id for k in keys), reverse=True)
        assert await ops.delete(first.id)
        assert not await ops.delete(first.id)
        assert (await ops.list(None, None, None, 10, 0, time.time()))[1] == 1
    finally:
        await store.close()


def test_the_app_loads_the_admin_api_on_first_use() -> None:
    """Importing the app (and the admin credentials it holds) loads none of the admin API's
    route modules: the proxy path never pays for them. An import inside a function is still an
    arrow to import-linter, so this one is checked at run time."""
    code = (
        "import sys\n"
        "import keygate.server.app\n"
        "app = sorted(m for m in sys.modules if m.startswith(('keygate.admin.api',"
        " 'keygate.admin.keys', 'keygate.admin.http', 'keygate.admin.stats')))\n"
        "print(app)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
