"""`keygate demo` as a newcomer runs it: one command, then the lines it prints work as shown.

The demo runs as a subprocess in a shell environment full of things it must ignore (a real-looking
provider key, a store URL, a config file, a gateway password): it serves on a free loopback
port, answers the OpenAI SDK on the unified endpoint (a plain model to the default provider,
`claude/…` translated to Anthropic's API), its printed `curl` and SDK lines run as printed, its
admin page opens with the printed admin password, and SIGINT / SIGTERM stop it cleanly, its
temporary data directory gone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from harness import eventually

CHROMIUM = Path("/usr/bin/chromium")
REAL_LOOKING_KEY = "csk-from-the-shell-must-not-be-used"
SHELL_PASSWORD = "password-from-the-shell"


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def value(self, label: str) -> str:
        found = re.search(rf"^  {label}\s+(\S+)", self.output, re.MULTILINE)
        assert found is not None, f"no {label!r} in the demo's output:\n{self.output}"
        return found.group(1)

    def printed(self, prefix: str) -> str:
        """The command line the demo printed that starts with `prefix`."""
        found = re.search(rf"^  ({re.escape(prefix)} .*)$", self.output, re.MULTILINE)
        assert found is not None, f"no {prefix} line in the demo's output:\n{self.output}"
        return found.group(1)

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(15)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update(
        {
            "TMPDIR": str(tmp_path),  # where its temporary data directory goes
            "PYTHONUNBUFFERED": "1",
            # what a user's shell may hold; the demo must use none of it
            "CEREBRAS_API_KEYS": REAL_LOOKING_KEY,
            "KEYGATE_DB": "postgresql://nobody@127.0.0.1:9/not-a-store",
            "KEYGATE_CONFIG": str(tmp_path / "no-such-config.yaml"),
            "KEYGATE_DATA_DIR": str(tmp_path / "real-data"),
            "ACCESS_PASSWORD": SHELL_PASSWORD,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "keygate", "demo", "--port", "0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    d = Demo(proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            d.lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        eventually(
            lambda: "Ctrl-C stops" in d.output or proc.poll() is not None,
            30,
            "the demo printed its instructions",
        )
        assert proc.poll() is None, d.output
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        assert not (tmp_path / "real-data").exists()  # the shell's data dir was not touched


def mock_requests(demo: Demo) -> list[dict[str, object]]:
    r = httpx.get(demo.value("mock upstream") + "/_mock/requests", timeout=10)
    assert r.status_code == 200
    return list(r.json())


def test_demo_serves_the_sdk_its_printed_lines_and_admin_page(demo: Demo) -> None:
    base, password = demo.value("gateway"), demo.value("gateway password")
    admin_password = demo.value("admin password")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", demo.value("mock upstream"))
    assert password != admin_password and len(password) >= 12
    data_dir = Path(demo.value("data"))
    assert data_dir.is_dir() and data_dir.name.startswith("keygate-demo-")

    client = openai.OpenAI(base_url=base + "/v1", api_key=password, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "Hi"}]
    # a plain model: the default provider, as it came
    raw = client.chat.completions.with_raw_response.create(model="llama3.1-8b", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-keygate-provider"] == "cerebras"
    assert "mock cerebras" in (raw.parse().choices[0].message.content or "")
    # another family's provider on the unified endpoint: translated to Anthropic's Messages API
    raw = client.chat.completions.with_raw_response.create(
        model="claude/claude-sonnet-4-5",
        messages=messages,  # type: ignore[arg-type]
    )
    assert raw.headers["x-keygate-provider"] == "claude"
    answer = raw.parse()
    assert "mock claude" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    # the merged model list names every provider's (mock) models and the aliases
    ids = {m.id for m in client.models.list()}
    assert {"llama3.1-8b", "groq/llama-3.1-8b-instant", "claude/claude-sonnet-4-5"} <= ids
    assert {"fast", "smart"} <= ids

    sent = mock_requests(demo)
    to_claude = [r for r in sent if r["path"] == "/v1/messages"]
    assert len(to_claude) == 1
    assert str(to_claude[0]["key"]).startswith("demo-claude-")
    assert "claude-sonnet-4-5" in str(to_claude[0]["body"])
    assert all(str(r["key"]).startswith("demo-") for r in sent), sent
    assert REAL_LOOKING_KEY not in str(sent)
    # the shell's password is not the demo's
    refused = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {SHELL_PASSWORD}"})
    assert refused.status_code == 401

    # the printed lines run as printed
    if shutil.which("curl"):
        done = subprocess.run(
            shlex.split(demo.printed("curl")), capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert "mock groq" in done.stdout, done.stdout
    python_line = shlex.split(demo.printed("python3"))
    done = subprocess.run(
        [sys.executable, *python_line[1:]], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Hello from the mock claude" in done.stdout

    # the admin page, and a login with the printed admin password
    page = httpx.get(demo.value("admin page"), timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    with httpx.Client(base_url=base, timeout=10) as admin:
        wrong = admin.post("/api/session", json={"password": password})
        assert wrong.status_code == 401
        login = admin.post("/api/session", json={"password": admin_password})
        assert login.status_code == 200, login.text
        assert "keygate_session" in admin.cookies
        stats = admin.get("/api/stats").json()
        assert {"cerebras", "groq", "claude", "gemini", "openai"} <= set(stats["providers"])
        assert stats["providers"]["claude"]["keys"]["total"] == 3
        # the mock announces each key's budget as the provider would: quotas are on the page
        keys = admin.get("/api/keys", params={"provider": "claude"}).json()["keys"]
        assert any(k["quota"]["rpm"]["limit"] for k in keys), keys

    assert demo.stop(signal.SIGINT) == 0, demo.output
    assert "drained" in demo.output
    assert not data_dir.exists()  # the temporary data directory is gone
    with pytest.raises(httpx.ConnectError):
        httpx.get(demo.value("mock upstream") + "/_mock/stats", timeout=2)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_demo_admin_page_in_chromium(demo: Demo) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, password = demo.value("gateway"), demo.value("gateway password")
    httpx.post(
        base + "/groq/v1/chat/completions",
        headers={"Authorization": f"Bearer {password}"},
        json={"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=20,
    ).raise_for_status()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(10_000)
            page.goto(demo.value("admin page"))
            page.fill("#login-password", demo.value("admin password"))
            page.click("#login-submit")
            expect(page.locator("#shell")).to_be_visible()
            page.click('.nav-link[data-view="providers"]')
            table = page.locator(".prov-table")
            for name in ("cerebras", "groq", "claude", "gemini", "openai"):
                expect(table).to_contain_text(name)
            page.click('.nav-link[data-view="keys"]')
            page.select_option("#keys-provider", "groq")
            expect(page.locator(".keys-table tbody tr")).to_have_count(3)
        finally:
            browser.close()
    assert demo.stop(signal.SIGTERM) == 0, demo.output
    assert not Path(demo.value("data")).exists()


def test_demo_refuses_a_data_dir_that_is_not_a_demos(tmp_path: Path) -> None:
    """`--data-dir` may name a new or empty directory or an earlier demo's, never a real one."""
    real = tmp_path / "keygate-data"
    real.mkdir()
    (real / "keygate.db").write_bytes(b"a real store")
    done = subprocess.run(
        [sys.executable, "-m", "keygate", "demo", "--port", "0", "--data-dir", str(real)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "other than a keygate demo" in done.stderr, done.stderr
    assert sorted(p.name for p in real.iterdir()) == ["keygate.db"]
    assert (real / "keygate.db").read_bytes() == b"a real store"
