"""The command line of SPEC §9 (`keygate keys …`, `providers`, `config check`), run exactly as a
user would: `python -m keygate …` in a subprocess with `KEYGATE_DATA_DIR` pointing at a temporary
store, and every provider's base URL at the mock upstream (for `keys test`).

Every CLI run goes through `Cli.run`, which checks that neither stdout nor stderr contains a whole
key this test made. The last two tests run the CLI against the store of a running gateway and
check that it picks the change up within about a second (SPEC §9: "safe while the server runs").

Store-agnostic where it can be: the CLI and `create_store` decide the backend from the
environment, so pointing `store_env` at PostgreSQL later reuses these tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import eventually, mock_env
from keygate.config.catalog import BUILTINS
from keygate.control.keypool import mask
from keygate.store import create_store
from keygate.testing.mock_upstream import MockUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
NOTE_PREFIXES = ("keygate: using ", "keygate: note: ")
SUMMARY_RE = re.compile(r"^(?P<provider>\S+): (?P<counts>.+) \(\d+\.\d\ds\)$")


def make_key(tag: str) -> str:
    """A fresh, unique key; the middle is random so a leak of it can be searched for."""
    return f"sk-{tag}-{secrets.token_hex(10)}"


def clean_env(data_dir: Path, mock: MockUpstream | None = None, **extra: str) -> dict[str, str]:
    """The user's environment without anything keygate reads, plus the store location."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEYS", "_BASE_URL"))
        and not k.startswith(("KEYGATE_", "ACCESS_", "AUTH_", "ADMIN_", "KV_"))
    }
    if mock is not None:
        env.update(mock_env(mock))
    env["KEYGATE_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


class Cli:
    """Runs `python -m keygate …` and guards its output against whole keys."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.secrets: set[str] = set()
        self.notes: list[str] = []  # the last run's "using store …" and "note: …" lines

    def key(self, tag: str) -> str:
        secret = make_key(tag)
        self.secrets.add(secret)
        return secret

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "keygate", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = proc.stdout + proc.stderr
        for secret in self.secrets:
            assert secret not in out, f"`keygate {' '.join(args)}` printed a whole key"
        assert "Traceback" not in out, out
        # which store and config a command used, and notes, go to stderr ahead of the rest
        lines = proc.stderr.splitlines(keepends=True)
        self.notes = [x.strip() for x in lines if x.startswith(NOTE_PREFIXES)]
        proc.stderr = "".join(x for x in lines if not x.startswith(NOTE_PREFIXES))
        return proc

    def ok(self, *args: str, input: str | None = None) -> str:
        proc = self.run(*args, input=input)
        assert proc.returncode == 0, f"keygate {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def keys(self, *args: str) -> dict[str, Any]:
        return json.loads(self.ok("keys", "list", "--json", "--limit", "1000", *args))

    def add(self, provider: str, secret: str, *args: str) -> int:
        out = self.ok("keys", "add", provider, secret, *args)
        m = re.search(r"id=(\d+)", out)
        assert m, out
        return int(m.group(1))


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    return {"KEYGATE_DATA_DIR": str(tmp_path / "store")}


@pytest.fixture
def cli(store_env: dict[str, str], mock: MockUpstream, tmp_path: Path) -> Cli:
    return Cli(clean_env(Path(store_env["KEYGATE_DATA_DIR"]), mock, **store_env))


def summary(out: str) -> tuple[str, dict[str, int]]:
    """The import summary line `provider: 3 added, 1 duplicate (0.01s)` as (provider, counts)."""
    last = out.strip().splitlines()[-1]
    m = SUMMARY_RE.match(last)
    assert m, f"no summary line in {out!r}"
    counts = {}
    for part in m.group("counts").split(", "):
        n, status = part.split(" ", 1)
        counts[status] = int(n)
    return m.group("provider"), counts


def status_lines(out: str) -> list[tuple[str, str, str]]:
    """Per-line import results `status  line N  masked  message` (every line but the summary),
    without the line numbers (see import_rows)."""
    return [row[:1] + row[2:] for row in import_rows(out)]


def import_rows(out: str) -> list[tuple[str, int, str, str]]:
    rows = []
    for line in out.strip().splitlines()[:-1]:
        status, word, number, masked, *rest = line.split(None, 4)
        assert word == "line", line
        rows.append((status, int(number), masked, rest[0] if rest else ""))
    return rows


def set_status(store_env: dict[str, str], key_id: int, status: str) -> None:
    """There is no `keys disable` in the CLI (SPEC §9): set a status through the store."""
    data_dir = Path(store_env["KEYGATE_DATA_DIR"])

    async def go() -> None:
        store = create_store(f"sqlite:///{(data_dir / 'keygate.db').resolve()}")
        await store.open()
        try:
            assert await store.update_key(key_id, status=status) is not None
        finally:
            await store.close()

    asyncio.run(go())


# --- keys add ---------------------------------------------------------------------------------


def test_add_from_argument_and_stdin_refuses_duplicates(cli: Cli) -> None:
    first, second = cli.key("add1"), cli.key("add2")
    out = cli.ok("keys", "add", "cerebras", first, "--label", "primary")
    assert re.fullmatch(rf"added cerebras key {re.escape(mask(first))} id=\d+\n", out)

    # `-` reads the key from stdin (keeps it out of shell history); surrounding blanks go
    out = cli.ok("keys", "add", "cerebras", "-", input=f"  {second}  \n")
    assert f"added cerebras key {mask(second)}" in out

    # the same key again, by argument or by stdin: refused, exit 1, message without the key
    for args, stdin in (((first,), None), (("-",), second + "\n")):
        proc = cli.run("keys", "add", "cerebras", *args, input=stdin)
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert proc.stderr.strip() == "duplicate: cerebras already has this key"

    # duplicates are refused per provider: another provider may hold the same secret
    cli.ok("keys", "add", "groq", first)

    # nothing on stdin, or a key with whitespace inside: one line, exit 1
    for stdin, why in (("", "empty"), ("\n", "empty")):
        proc = cli.run("keys", "add", "cerebras", "-", input=stdin)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"keygate: the key is not valid: {why}"
    proc = cli.run("keys", "add", "cerebras", "sk-two words")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "whitespace" in proc.stderr

    listed = cli.keys()
    assert listed["total"] == 3
    by_mask = {(k["provider"], k["masked"]): k for k in listed["keys"]}
    assert by_mask["cerebras", mask(first)]["label"] == "primary"
    assert by_mask["cerebras", mask(second)]["label"] == ""
    assert {k["source"] for k in listed["keys"]} == {"cli"}
    assert {k["status"] for k in listed["keys"]} == {"active"}


# --- keys import ------------------------------------------------------------------------------


def test_import_from_file_every_separator_with_duplicates_blanks_and_invalid(
    cli: Cli, tmp_path: Path
) -> None:
    stored = cli.key("stored")
    cli.add("cerebras", stored)
    k = [cli.key(f"imp{i}") for i in range(6)]
    too_long = "sk-" + "x" * 600
    text = (
        f"{k[0]}\n"
        "\n"  # blank lines are ignored, not errors
        f"{k[1]},{k[2]}\n"
        f"   \t{k[3]}  {k[4]}\r\n"
        f" , ,\n"  # empty fields between commas: ignored too
        f"{k[0]}\n"  # repeated in this input
        f"{stored}\n"  # already in the store
        f'"{k[5]}"\n'  # quotes from a pasted list are stripped
        f"{too_long}\n"
    )
    path = tmp_path / "keys.txt"
    path.write_text(text, encoding="utf-8")

    out = cli.ok("keys", "import", "cerebras", str(path))
    assert too_long not in out
    assert summary(out) == ("cerebras", {"added": 6, "duplicate": 2, "invalid": 1})
    # without -v only the lines that were not added are listed, in input order
    assert status_lines(out) == [
        ("duplicate", mask(k[0]), "repeated in this input"),
        ("duplicate", mask(stored), "already stored"),
        ("invalid", mask(too_long), "longer than 512 characters"),
    ]

    # importing the same file again: everything is a duplicate, nothing changes
    out = cli.run("keys", "import", "cerebras", str(path)).stdout
    assert summary(out) == ("cerebras", {"duplicate": 8, "invalid": 1})

    listed = cli.keys("--provider", "cerebras")
    assert listed["total"] == 7
    assert {x["masked"] for x in listed["keys"]} == {mask(s) for s in [stored, *k]}


def test_import_from_stdin_json_array_and_verbose(cli: Cli) -> None:
    a, b, c = cli.key("json-a"), cli.key("json-b"), cli.key("json-c")
    doc = json.dumps([a, b, a, "", "  ", f" {c} ", "sk-has space-inside"])
    out = cli.ok("keys", "import", "groq", "-v", input=doc)
    assert summary(out) == ("groq", {"added": 3, "duplicate": 1, "invalid": 1})
    # -v lists every token's result; blanks in the array are not tokens
    assert status_lines(out) == [
        ("added", mask(a), ""),
        ("added", mask(b), ""),
        ("duplicate", mask(a), "repeated in this input"),
        ("added", mask(c), ""),
        ("invalid", mask("sk-has space-inside"), "contains whitespace or control characters"),
    ]

    # newlines, commas and whitespace on stdin, with `-` or without a file argument
    d, e, f = cli.key("stdin-d"), cli.key("stdin-e"), cli.key("stdin-f")
    out = cli.ok("keys", "import", "groq", "-", input=f"{d}\n\n{e}, {b}\n")
    assert summary(out) == ("groq", {"added": 2, "duplicate": 1})
    assert status_lines(out) == [("duplicate", mask(b), "already stored")]
    out = cli.ok("keys", "import", "groq", input=f"{f}\t{f}")
    assert summary(out) == ("groq", {"added": 1, "duplicate": 1})

    # nothing to import at all
    proc = cli.run("keys", "import", "groq", input="\n , \n")
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("groq: nothing to import")

    listed = cli.keys("--provider", "groq")
    assert listed["total"] == 6
    assert {x["source"] for x in listed["keys"]} == {"cli"}

    # a file that is not there: one line, exit 1
    proc = cli.run("keys", "import", "groq", "/nonexistent/keys.txt")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "/nonexistent/keys.txt" in proc.stderr


# --- keys list --------------------------------------------------------------------------------


def test_list_filters_search_pagination_and_json(cli: Cli, store_env: dict[str, str]) -> None:
    cer = [cli.key(f"list{i}") for i in range(7)]
    ids = [
        cli.add("cerebras", s, "--label", f"team-{'red' if i % 2 else 'blue'}-{i}")
        for i, s in enumerate(cer)
    ]
    gq = [cli.key(f"groq{i}") for i in range(2)]
    cli.ok("keys", "import", "groq", input="\n".join(gq))
    set_status(store_env, ids[3], "disabled")

    everything = cli.keys()
    assert everything["total"] == 9
    assert [x["id"] for x in everything["keys"]] == sorted(
        (x["id"] for x in everything["keys"]), reverse=True
    ), "newest first"
    fields = {"id", "provider", "masked", "label", "status", "use_count", "last_used"}
    assert fields <= set(everything["keys"][0])

    assert cli.keys("--provider", "groq")["total"] == 2
    assert {x["masked"] for x in cli.keys("--provider", "groq")["keys"]} == {mask(s) for s in gq}
    disabled = cli.keys("--status", "disabled")
    assert [x["id"] for x in disabled["keys"]] == [ids[3]]
    assert cli.keys("--status", "active")["total"] == 8
    assert cli.keys("--provider", "groq", "--status", "disabled")["total"] == 0

    # search: label (case-insensitive), masked form, or the whole key pasted in
    red = cli.keys("-q", "RED")
    assert sorted(x["id"] for x in red["keys"]) == [ids[1], ids[3], ids[5]]
    assert cli.keys("-q", "red", "--status", "active")["total"] == 2
    assert [x["id"] for x in cli.keys("-q", mask(cer[4]))["keys"]] == [ids[4]]
    assert [x["id"] for x in cli.keys("--search", cer[6])["keys"]] == [ids[6]]
    assert cli.keys("-q", "no-such-label")["total"] == 0

    # pagination: pages of 4 are disjoint, ordered, and together are the whole list
    pages = [
        json.loads(cli.ok("keys", "list", "--json", "--limit", "4", "--offset", str(off)))
        for off in (0, 4, 8)
    ]
    assert [len(p["keys"]) for p in pages] == [4, 4, 1]
    assert {p["total"] for p in pages} == {9}
    assert [x["id"] for p in pages for x in p["keys"]] == [x["id"] for x in everything["keys"]]

    # the table: a header, one row per key with masked key and label, "N of M"
    out = cli.ok("keys", "list", "--provider", "cerebras", "--limit", "3", "--offset", "1")
    lines = out.strip().splitlines()
    # every count says what it counts: a legend beside the table names each column
    header = lines[0].split()
    assert header == ["id", "provider", "key", "status", "req/total", "req/day", "tok/day", "label"]
    [legend] = [n for n in cli.notes if "req/total" in n]
    for column in ("req/total = requests sent", "req/day, tok/day = requests and tokens in"):
        assert column in legend, legend
    assert lines[-1] == "3 of 7"
    assert len(lines) == 5
    assert lines[1].split()[:4] == [str(ids[5]), "cerebras", mask(cer[5]), "active"]
    assert lines[1].split()[4:7] == ["0", "-", "-"]  # no day limit: nothing counted, not a 0
    assert lines[1].endswith("team-red-5")
    rows = cli.ok("keys", "list", "--status", "disabled").strip().splitlines()[1:-1]
    assert [row.split()[:4] for row in rows] == [
        [str(ids[3]), "cerebras", mask(cer[3]), "disabled"]
    ]

    proc = cli.run("keys", "list", "--status", "sleepy")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


# --- keys rm ----------------------------------------------------------------------------------


def test_rm(cli: Cli) -> None:
    ids = [cli.add("cerebras", cli.key(f"rm{i}")) for i in range(3)]
    assert cli.ok("keys", "rm", str(ids[0])) == f"deleted {ids[0]}\n"
    assert [x["id"] for x in cli.keys()["keys"]] == [ids[2], ids[1]]

    proc = cli.run("keys", "rm", str(ids[1]), str(ids[0]), "999")
    assert proc.returncode == 1
    assert proc.stdout == f"deleted {ids[1]}\n"
    assert proc.stderr.splitlines() == [f"no key with id {ids[0]}", "no key with id 999"]
    assert [x["id"] for x in cli.keys()["keys"]] == [ids[2]]


# --- keys test --------------------------------------------------------------------------------


def test_keys_test_against_the_mock(cli: Cli, mock: MockUpstream) -> None:
    good, bad = cli.key("good"), cli.key("bad")
    good_id, bad_id = cli.add("cerebras", good), cli.add("cerebras", bad)
    claude = cli.key("claude")
    claude_id = cli.add("claude", claude)
    mock.set_behavior(bad, status=401)

    out = cli.ok("keys", "test", str(good_id))
    row = out.split()
    assert row[:5] == [str(good_id), "cerebras", mask(good), "ok", "200"]
    probe = mock.records()[-1]
    assert (probe.method, probe.path, probe.key) == ("GET", "/v1/models", good)

    proc = cli.run("keys", "test", str(bad_id))
    assert proc.returncode == 1
    assert proc.stdout.split()[:5] == [str(bad_id), "cerebras", mask(bad), "FAIL", "401"]
    assert "401 from upstream" in proc.stdout

    # every key of a provider; Anthropic-style keys are sent as x-api-key
    proc = cli.run("keys", "test", "--provider", "cerebras")
    assert proc.returncode == 1
    results = {line.split()[0]: line.split()[3] for line in proc.stdout.strip().splitlines()}
    assert results == {str(good_id): "ok", str(bad_id): "FAIL"}
    cli.ok("keys", "test", str(claude_id))
    assert mock.records()[-1].headers.get("x-api-key") == claude

    # an id that does not exist is an error, also next to one that does
    proc = cli.run("keys", "test", "999")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "no key with id 999"
    proc = cli.run("keys", "test", str(good_id), "999")
    assert proc.returncode == 1
    assert "ok" in proc.stdout
    assert proc.stderr.strip() == "no key with id 999"
    proc = cli.run("keys", "test")
    assert proc.returncode == 1
    assert proc.stderr.strip()


# --- providers --------------------------------------------------------------------------------


def test_providers_text_and_json(cli: Cli, store_env: dict[str, str], tmp_path: Path) -> None:
    for i in range(3):
        cli.add("cerebras", cli.key(f"prov{i}"))
    cli.add("groq", cli.key("provg"))
    out = cli.ok("providers")
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["provider", "keys"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(BUILTINS)
    assert rows["cerebras"][1] == "3"
    assert rows["groq"][1] == "1"
    assert rows["openai"][1] == "0"

    doc = json.loads(cli.ok("providers", "--json"))
    by_name = {p["name"]: p for p in doc}
    assert set(by_name) == set(BUILTINS)
    assert by_name["cerebras"]["key_counts"] == {"active": 3}
    assert by_name["groq"]["key_counts"] == {"active": 1}
    assert by_name["openai"]["key_counts"] == {}
    assert "keys" not in by_name["cerebras"]
    for field in ("base_url", "key_style", "rps", "burst", "max_conn", "default_model"):
        assert field in by_name["cerebras"]
    assert by_name["claude"]["key_style"] == "x-api-key"

    # run-time overrides in the store and a config file's custom provider both show
    data_dir = Path(store_env["KEYGATE_DATA_DIR"])

    async def override() -> None:
        store = create_store(f"sqlite:///{(data_dir / 'keygate.db').resolve()}")
        await store.open()
        try:
            await store.set_provider_override("cerebras", {"rps": 7.5, "burst": 9})
        finally:
            await store.close()

    asyncio.run(override())
    cfg = tmp_path / "custom.yaml"
    cfg.write_text(yaml.safe_dump({"providers": {"acme": {"base_url": "http://127.0.0.1:9"}}}))
    doc = json.loads(cli.ok("providers", "--json", "--config", str(cfg)))
    by_name = {p["name"]: p for p in doc}
    assert (by_name["cerebras"]["rps"], by_name["cerebras"]["burst"]) == (7.5, 9)
    assert by_name["acme"]["base_url"] == "http://127.0.0.1:9"
    assert by_name["acme"]["builtin"] is False


# --- config check -----------------------------------------------------------------------------


def test_config_check_good_and_bad_files(cli: Cli, tmp_path: Path) -> None:
    secret = cli.key("cfg")
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "default_provider": "groq",
                "providers": {
                    "cerebras": {"rps": 3, "burst": 6, "keys": [secret]},
                    "acme": {"base_url": "https://llm.example.com", "key_style": "bearer"},
                },
            }
        )
    )
    out = cli.ok("config", "check", str(good))
    assert out.startswith(f"{good}: ok")
    assert "default groq" in out

    bad_cases: dict[str, tuple[Any, list[str]]] = {
        "bad-number.yaml": (
            {"providers": {"cerebras": {"rps": "fast", "keys": [secret]}}},
            ["providers.cerebras.rps", "must be a number", "'fast'"],
        ),
        "negative.yaml": (
            {"providers": {"groq": {"max_conn": -1}}},
            ["providers.groq.max_conn", "≥ 0"],
        ),
        "unknown-field.yaml": (
            {"providers": {"cerebras": {"rsp": 3}}},
            ["providers.cerebras", "unknown field", "rsp"],
        ),
        "unknown-top.yaml": ({"provider": {}}, ["unknown field", "provider"]),
        "custom-without-base.yaml": (
            {"providers": {"acme": {"rps": 1}}},
            ["providers.acme.base_url", "required"],
        ),
        "bad-style.yaml": (
            {"providers": {"acme": {"base_url": "https://x.example", "key_style": "magic"}}},
            ["providers.acme.key_style", "magic"],
        ),
        "bad-default.yaml": ({"default_provider": "nope"}, ["default_provider", "'nope'"]),
        "bad-keys.yaml": ({"providers": {"cerebras": {"keys": 5}}}, ["providers.cerebras.keys"]),
        "bad-yaml.yaml": ("providers:\n  cerebras: {rps: 3\n", ["invalid YAML", "line"]),
        "not-a-mapping.yaml": ("- a\n- b\n", ["top level must be a mapping"]),
    }
    for name, (content, words) in bad_cases.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        proc = cli.run("config", "check", str(path))
        assert proc.returncode != 0, name
        assert proc.stdout == "", name
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"{name}: {proc.stderr}"
        assert str(path) in lines[0], f"{name}: {lines[0]}"
        for word in words:
            assert word in lines[0], f"{name}: {word!r} not in {lines[0]!r}"

    missing = tmp_path / "missing.yaml"
    proc = cli.run("config", "check", str(missing))
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(missing) in proc.stderr and "cannot read" in proc.stderr


def test_unknown_provider_exits_2_with_one_line(cli: Cli) -> None:
    secret = cli.key("nope")
    for args, stdin in (
        (("keys", "add", "nope", secret), None),
        (("keys", "add", "nope", "-"), secret),
        (("keys", "import", "nope"), secret),
        (("keys", "test", "--provider", "nope"), None),
    ):
        proc = cli.run(*args, input=stdin)
        assert proc.returncode == 2, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("keygate: no provider named 'nope' (known: cerebras, ")
    assert cli.keys()["total"] == 0


# --- the CLI next to a running gateway --------------------------------------------------------


def _proxied_key(gw: Any, mock: MockUpstream, client: httpx.Client) -> str | None:
    r = client.post("/cerebras/v1/chat/completions", json=CHAT, headers=gw.auth())
    assert r.status_code == 200, r.text
    return mock.records()[-1].key


def test_cli_changes_reach_a_running_gateway(gateway_factory: Any, mock: MockUpstream) -> None:
    env_key = make_key("env")
    gw = gateway_factory(
        env={"CEREBRAS_API_KEYS": env_key},
        # round-robin over the same request: no key affinity (SPEC §15) to keep it on one key
        config={
            "providers": {"cerebras": {"rps": 0, "max_conn": 0, "retries": 0, "affinity": "off"}}
        },
    )
    cli = Cli(clean_env(gw.data_dir, mock))
    cli.secrets.add(env_key)

    # the start-up import of CEREBRAS_API_KEYS is in the store, marked as from the environment
    listed = cli.keys()
    assert [(x["masked"], x["source"]) for x in listed["keys"]] == [(mask(env_key), "env")]

    new = cli.key("hot")
    with gw.client() as client:
        assert _proxied_key(gw, mock, client) == env_key
        new_id = cli.add("cerebras", new)
        added_at = time.monotonic()
        eventually(
            lambda: _proxied_key(gw, mock, client) == new,
            3,
            "a key added with the CLI is used",
            interval=0.05,
        )
        seen_after = time.monotonic() - added_at
        assert seen_after < 2.0, f"a key added with the CLI was first used after {seen_after:.2f}s"
        print(f"\nCLI add → first proxied use: {seen_after:.2f}s")

        # removed: never used again once the gateway had ~1 s to notice
        cli.ok("keys", "rm", str(new_id))
        removed_at = time.monotonic()
        uses: list[tuple[float, str | None]] = []
        while time.monotonic() - removed_at < 3.5:
            uses.append((time.monotonic() - removed_at, _proxied_key(gw, mock, client)))
            time.sleep(0.02)
        last_use = max((t for t, key in uses if key == new), default=None)
        assert all(key != new for t, key in uses if t > 2.0), (
            f"a key removed with the CLI was still used {last_use:.2f}s later"
        )
        assert sum(1 for t, _ in uses if t > 2.0) > 10
        print(f"CLI rm → last proxied use: {last_use if last_use is None else round(last_use, 2)}s")

    # and the admin API of the running gateway agrees
    r = gw.api("GET", "/api/keys", params={"provider": "cerebras"})
    assert [k["masked"] for k in r.json()["keys"]] == [mask(env_key)]
    assert env_key not in gw.log() and new not in gw.log()


def test_cli_import_reaches_a_running_gateway(gateway_factory: Any, mock: MockUpstream) -> None:
    # round-robin over the same request: no key affinity (SPEC §15) to keep it on one key
    gw = gateway_factory(
        config={"providers": {"groq": {"rps": 0, "max_conn": 0, "affinity": "off"}}}
    )
    cli = Cli(clean_env(gw.data_dir, mock))
    keys = [cli.key(f"bulk{i}") for i in range(5)]
    out = cli.ok("keys", "import", "groq", input=", ".join(keys))
    assert summary(out) == ("groq", {"added": 5})
    seen: set[str | None] = set()

    def all_used() -> bool:
        r = client.post("/groq/v1/chat/completions", json=CHAT, headers=gw.auth())
        if r.status_code == 200:  # else no keys yet: the gateway has not polled the store
            seen.add(mock.records()[-1].key)
        return seen == set(keys)

    with gw.client() as client:
        eventually(
            all_used,
            3,
            "every key imported with the CLI is used",
            context=lambda: f"used: {len(seen & set(keys))} of {len(keys)}",
        )


# --- the CLI finds the server's config and store ----------------------------------------------


def test_cli_uses_the_servers_recorded_config_and_store(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    # a custom provider that exists only in the server's config file, upstream = the mock
    gw = gateway_factory(
        config={"providers": {"acme": {"base_url": mock.url, "key_style": "bearer", "rps": 0}}}
    )
    record_path = gw.data_dir / "server.json"
    assert record_path.stat().st_mode & 0o777 == 0o600
    record = json.loads(record_path.read_text())
    config_path = gw.argv[gw.argv.index("--config") + 1]
    assert record["config"] == str(Path(config_path).resolve())
    text = record_path.read_text()
    assert gw.password not in text and gw.admin_password not in text

    # no --config, no KEYGATE_CONFIG, no *_BASE_URL: only KEYGATE_DATA_DIR, from elsewhere
    cli = Cli(clean_env(gw.data_dir))
    secret = cli.key("acme")
    key_id = cli.add("acme", secret)  # the provider comes from the recorded config
    using = [n for n in cli.notes if n.startswith("keygate: using ")]
    assert using == [
        f"keygate: using store sqlite {(gw.data_dir / 'keygate.db').resolve()}; "
        f"config {Path(config_path).resolve()} (from the server's record)"
    ]
    assert any("CEREBRAS_BASE_URL" in n for n in cli.notes), cli.notes

    out = cli.ok("keys", "test", str(key_id))
    assert out.split()[:5] == [str(key_id), "acme", mask(secret), "ok", "200"]
    probe = mock.records()[-1]
    assert (probe.method, probe.path, probe.key) == ("GET", "/v1/models", secret)

    # a failing test is recorded, and the running server stops using the key
    mock.set_behavior(secret, status=401)
    proc = cli.run("keys", "test", str(key_id))
    assert proc.returncode == 1 and "now invalid" in proc.stdout

    def status() -> str:
        keys = gw.api("GET", "/api/keys", params={"provider": "acme"}).json()["keys"]
        return str(keys[0]["status"])

    eventually(
        lambda: status() == "invalid",
        5,
        "the server picks up the CLI's test result",
        interval=0.05,
        context=lambda: f"status: {status()}",
    )


def test_read_commands_refuse_a_store_that_does_not_exist(tmp_path: Path) -> None:
    nowhere = tmp_path / "not-the-data-dir"
    cli = Cli(clean_env(nowhere))
    for args in (
        ("keys", "list"),
        ("keys", "list", "--json"),
        ("keys", "test", "1"),
        ("keys", "test", "--provider", "cerebras"),
        ("keys", "rm", "1"),
        ("providers",),
    ):
        proc = cli.run(*args)
        assert proc.returncode == 1, args
        assert proc.stdout == "", args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (args, lines)
        assert lines[0].startswith(f"keygate: no store at {(nowhere / 'keygate.db').resolve()}")
        assert "KEYGATE_DATA_DIR" in lines[0]
        assert any(n.startswith("keygate: using store sqlite ") for n in cli.notes), args
    assert not nowhere.exists(), "a read command created a store"

    # a write command creates it, and says so
    cli.add("cerebras", cli.key("first"))
    assert any("creating a new store" in n for n in cli.notes)
    assert cli.keys()["total"] == 1


def test_server_record_never_holds_a_database_password(tmp_path: Path) -> None:
    from keygate.cli.locate import locate, write_record
    from keygate.config.settings import ConfigError, load_settings

    data_dir = tmp_path / "pg-data"
    url = "postgresql://kg:s3cret-pw@127.0.0.1:5999/keygate"
    env = {"KEYGATE_DATA_DIR": str(data_dir), "KEYGATE_DB": url, "KEYGATE_SECRET_KEY": "k" * 32}
    path = write_record(load_settings(env), env)
    text = path.read_text()
    assert "s3cret-pw" not in text and "k" * 32 not in text
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(text)["store"]["url"] == "postgresql://kg:***@127.0.0.1:5999/keygate"

    # the CLI without KEYGATE_DB: told which variable to set, never handed a masked URL
    with pytest.raises(ConfigError, match="set KEYGATE_DB"):
        locate({"KEYGATE_DATA_DIR": str(data_dir)})
    located = locate({"KEYGATE_DATA_DIR": str(data_dir), "KEYGATE_DB": url})
    assert located.settings.db_url == url and located.store_from == "KEYGATE_DB"
    assert any("KEYGATE_SECRET_KEY" in n for n in located.notes)

    # a URL without a password is recorded whole and used as it is
    plain = "postgresql://127.0.0.1:5999/keygate"
    write_record(load_settings({**env, "KEYGATE_DB": plain}), env)
    located = locate({"KEYGATE_DATA_DIR": str(data_dir)})
    assert located.settings.db_url == plain and located.store_from == "the server's record"


# --- keys test records what it proved ---------------------------------------------------------


def test_keys_test_records_health_in_the_store(cli: Cli, mock: MockUpstream) -> None:
    good, bad, limited, broke = (cli.key(t) for t in ("h-good", "h-bad", "h-429", "h-quota"))
    ids = {s: cli.add("cerebras", s) for s in (good, bad, limited, broke)}
    mock.set_behavior(bad, status=401)
    mock.set_behavior(limited, status=429, headers={"retry-after": "120"})
    mock.set_behavior(
        broke, status=429, body={"error": {"message": "quota", "code": "insufficient_quota"}}
    )
    started = time.time()
    proc = cli.run("keys", "test", "--provider", "cerebras")
    assert proc.returncode == 1
    by_id = {k["id"]: k for k in cli.keys()["keys"]}
    assert by_id[ids[good]]["status"] == "active"
    assert by_id[ids[bad]]["status"] == "invalid"
    assert by_id[ids[bad]]["last_error"] == "401 invalid key"
    assert by_id[ids[limited]]["status"] == "cooling"
    assert started + 115 <= by_id[ids[limited]]["until"] <= time.time() + 125
    assert by_id[ids[broke]]["status"] == "exhausted"
    rows = {line.split()[0]: line for line in proc.stdout.strip().splitlines()}
    assert rows[str(ids[bad])].endswith("now invalid")
    assert "now" not in rows[str(ids[good])]

    # the upstream takes the key again: a passing test brings it back
    mock.set_behavior(bad)
    cli.ok("keys", "test", str(ids[bad]))
    after = {k["id"]: k for k in cli.keys()["keys"]}[ids[bad]]
    assert (after["status"], after["last_error"]) == ("active", "")


# --- import: JSON arrays per line, line numbers -----------------------------------------------


def test_import_json_array_per_line_and_line_numbers(cli: Cli, tmp_path: Path) -> None:
    k = [cli.key(f"line{i}") for i in range(6)]
    text = (
        f'["{k[0]}"]\n'  # a JSON array on one line
        f"{k[1]}\n"
        f'["{k[2]}", "{k[3]}"]\n'
        "\n"
        "short\n"  # line 5
        f"[{k[4]}, '{k[5]}']\n"  # array-looking, not JSON: no bracket or quote is kept
        f"{k[1]}\n"  # line 7: repeated
    )
    path = tmp_path / "lines.txt"
    path.write_text(text, encoding="utf-8")
    out = cli.ok("keys", "import", "groq", str(path))
    assert summary(out) == ("groq", {"added": 6, "duplicate": 1, "invalid": 1})
    assert import_rows(out) == [
        ("invalid", 5, mask("short"), "shorter than 8 characters: not an API key"),
        ("duplicate", 7, mask(k[1]), "repeated in this input"),
    ]
    assert {x["masked"] for x in cli.keys("--provider", "groq")["keys"]} == {mask(s) for s in k}

    # a whole-text JSON array over several lines keeps each item's own line
    more = [cli.key(f"multi{i}") for i in range(2)]
    doc = json.dumps([more[0], "tiny", more[1]], indent=2)
    out = cli.ok("keys", "import", "groq", "-v", input=doc)
    assert import_rows(out) == [
        ("added", 2, mask(more[0]), ""),
        ("invalid", 3, mask("tiny"), "shorter than 8 characters: not an API key"),
        ("added", 4, mask(more[1]), ""),
    ]


def test_parse_key_entries() -> None:
    from keygate.store.base import parse_key_entries, parse_key_input

    assert parse_key_entries('["csk-aaaaaaaa"]') == [(1, "csk-aaaaaaaa")]
    assert parse_key_entries('x-11111111\n["csk-a", "csk-b"]\r\n') == [
        (1, "x-11111111"),
        (2, "csk-a"),
        (2, "csk-b"),
    ]
    assert parse_key_entries('["csk-a",\n "csk-b"\n') == [(1, "csk-a"), (2, "csk-b")]
    assert parse_key_input('[\n "a-1",\n "b-2"\n]') == ["a-1", "b-2"]
    assert parse_key_input('`k-1`, "k-2";') == ["k-1", 'k-2";']


# --- keys list: lag note, unknown provider; config check: every error -------------------------


def test_keys_list_says_it_may_lag_and_refuses_unknown_providers(cli: Cli) -> None:
    cli.add("cerebras", cli.key("lag"))
    cli.keys()
    assert any("may lag" in n and "5 s" in n for n in cli.notes), cli.notes
    proc = cli.run("keys", "list", "--provider", "nosuch")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("keygate: no provider named 'nosuch' (known: ")


def test_keys_list_knows_providers_that_only_the_store_has(cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "acme.yaml"
    cfg.write_text(yaml.safe_dump({"providers": {"acme": {"base_url": "http://127.0.0.1:9"}}}))
    cli.ok("keys", "add", "acme", cli.key("gone"), "--config", str(cfg))
    # the provider left the config: its keys are still listed, not refused
    assert cli.keys("--provider", "acme")["total"] == 1


def test_config_check_reports_every_error_and_refused_keys(cli: Cli, tmp_path: Path) -> None:
    good_key = cli.key("cfg-good")
    path = tmp_path / "many.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "colour": "blue",
                "providers": {
                    "cerebras": {"rps": "fast", "max_conn": -1, "keys": [good_key, "short"]},
                    "acme": {"rps": 1},
                    "groq": {"keys": f"{good_key}, spaced-key-one spaced-key-two, sk-{'x' * 600}"},
                },
            }
        )
    )
    cli.env["XAI_API_KEYS"] = "tiny"
    proc = cli.run("config", "check", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    expected = [
        ("unknown field colour",),
        ("providers.cerebras.rps", "must be a number"),
        ("providers.cerebras.max_conn", "≥ 0"),
        ("providers.cerebras.keys[1]", mask("short"), "shorter than 8"),
        ("providers.acme.base_url", "required"),
        ("providers.groq.keys[3]", "longer than 512"),
        ("environment variable XAI_API_KEYS", "key[0]", "shorter than 8"),
    ]
    assert len(lines) == len(expected), lines
    for words in expected:  # in the file's order (safe_dump sorts it): match, not zip
        matching = [line for line in lines if all(word in line for word in words)]
        assert len(matching) == 1, (words, lines)
        assert "environment" in words[0] or str(path) in matching[0], matching
    # a key list in one string splits on whitespace too: two keys, not one refused
    assert not any("spaced" in line or good_key in line for line in lines)


def test_config_check_reports_every_models_error(cli: Cli, tmp_path: Path) -> None:
    """An unknown provider, a cycle and an empty group in one `models:` table: three lines, each
    naming its key; the cycle once; an entry naming a broken one adds nothing of its own."""
    path = tmp_path / "models.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "typo": "nosuch/m",
                    "loop-a": {"targets": ["loop-b"]},
                    "loop-b": "loop-a",
                    "empty": {"strategy": "fallback", "targets": []},
                    "odd": {"strategy": "round", "targets": ["groq/m", "nope/x"], "weight": 2},
                    "uses-typo": {"targets": ["typo", "groq/m"]},
                    "fine": "groq/llama-3.1-8b-instant",
                }
            }
        )
    )
    proc = cli.run("config", "check", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    expected = [
        "models.typo: unknown provider 'nosuch'",
        "models.loop-b: cycle: loop-a → loop-b → loop-a",
        "models.empty.targets: must be a non-empty list",
        "models.odd: unknown field(s) weight",
        "models.odd.strategy: must be one of",
        "models.odd.targets[1]: unknown provider 'nope'",
    ]
    assert len(lines) == len(expected), lines
    for problem in expected:
        [line] = [x for x in lines if f": {problem}" in x]
        assert line.startswith(f"keygate: config file {path}: models."), line
    # the server refuses the same file, at its first problem
    from keygate.config.settings import ConfigError, load_settings

    with pytest.raises(ConfigError) as exc:
        load_settings({}, path)
    assert f"keygate: {exc.value}" in lines


def test_serve_help_explains_every_option(tmp_path: Path) -> None:
    cli = Cli(clean_env(tmp_path / "data"))
    out = cli.ok("serve", "--help")
    options = " ".join(out.split("options:", 1)[1].split())  # argparse wraps the help text
    for flag, words in (
        ("--host HOST", "address to listen on (or KEYGATE_HOST; default 127.0.0.1"),
        ("--port PORT", "port to listen on (or KEYGATE_PORT, or PORT; default 8080)"),
        ("--config CONFIG", "YAML config file (or KEYGATE_CONFIG)"),
        ("--workers WORKERS", "worker processes on one port (or KEYGATE_WORKERS)"),
    ):
        assert f"{flag} {words}" in options, (flag, out)
