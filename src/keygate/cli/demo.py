"""`keygate demo`: the gateway and the built-in mock providers on loopback, in one command.

Every built-in provider's base URL points at one mock upstream (the one the tests use) on
127.0.0.1, five of them get a few fake keys, and the gateway and admin passwords are random:
routing, translation, quotas and the admin page can be tried without a provider key and
without the network. The data directory is a new temporary one (removed on exit) or
`--data-dir`, which must be empty or an earlier demo's, so a real store is never touched; the
environment's keys, store and config are ignored. Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from keygate.config.catalog import BUILTINS, env_names

HOST = "127.0.0.1"
MARKER = "keygate-demo"  # names a data directory as a demo's
KEYS_PER_PROVIDER = 3
# provider → (the models its mock lists, the budget headers its mock announces)
PROVIDERS: dict[str, tuple[list[str], str | None]] = {
    "cerebras": (["llama3.1-8b", "llama-3.3-70b", "gpt-oss-120b"], "openai"),
    "groq": (["llama-3.1-8b-instant", "llama-3.3-70b-versatile"], "openai"),
    "claude": (["claude-sonnet-4-5", "claude-haiku-4-5"], "anthropic"),
    "gemini": (["gemini-2.5-flash", "gemini-2.0-flash"], None),
    "openai": (["gpt-4o-mini", "gpt-4o"], "openai"),
}
# each fake key's own budget at its mock, announced in the provider's headers (per minute)
MOCK_REQUESTS_PER_MIN = 30
MOCK_TOKENS_PER_MIN = 30_000
CONFIG: dict[str, Any] = {
    "default_provider": "cerebras",
    "providers": {"groq": {"key_rpm": 20, "key_tpd": 500_000}},
    "models": {
        "fast": {
            "strategy": "fallback",
            "targets": ["groq/llama-3.1-8b-instant", "cerebras/llama3.1-8b"],
        },
        "smart": "claude/claude-sonnet-4-5",
    },
}


_DROPPED = frozenset({"ACCESS_PASSWORD", "AUTH_PASSWORD", "ADMIN_PASSWORD", "PORT"})
_DROPPED_SUFFIXES = ("_API_KEYS", "_BASE_URL")


def fake_keys(provider: str) -> list[str]:
    """The same fake keys every run, so a kept `--data-dir` does not collect new ones."""
    return [f"demo-{provider}-key-{i}" for i in range(1, KEYS_PER_PROVIDER + 1)]


def register(sub: Any) -> None:
    """Add `keygate demo` to the command line's subcommands."""
    demo = sub.add_parser(
        "demo",
        help="run the gateway with built-in mock providers on loopback (no provider keys needed)",
        description=(
            "Run keygate with every built-in provider pointed at a mock upstream on 127.0.0.1: "
            "fake keys, random passwords, a temporary store. Nothing leaves this machine. "
            "Ctrl-C stops it."
        ),
    )
    demo.add_argument(
        "--port", type=int, default=8080, help="the gateway's port on 127.0.0.1 (0: any free one)"
    )
    demo.add_argument(
        "--mock-port", type=int, default=0, help="the mock upstream's port (default: any free one)"
    )
    demo.add_argument(
        "--data-dir",
        help="keep the demo's store here (empty or an earlier demo's; default: a temporary "
        "directory, removed on exit)",
    )
    demo.set_defaults(func=cmd_demo)


def _data_dir(given: str | None) -> tuple[Path, bool]:
    """The demo's data directory and whether it is a temporary one to remove on exit."""
    if not given:
        return Path(tempfile.mkdtemp(prefix="keygate-demo-")), True
    path = Path(given)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"keygate demo: --data-dir {path} is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
        raise SystemExit(
            f"keygate demo: --data-dir {path} holds something other than a keygate demo's data; "
            "give a new or empty directory (the demo never uses a real store)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def _demo_environment(data_dir: Path, config: Path, mock_url: str) -> dict[str, str]:
    """The variables the gateway reads, all of them the demo's: the shell's keys, base URLs,
    passwords, store and config are dropped (in this process only)."""
    for name in list(os.environ):
        if name.startswith("KEYGATE_") or name.endswith(_DROPPED_SUFFIXES) or name in _DROPPED:
            del os.environ[name]
    env = {
        "KEYGATE_DATA_DIR": str(data_dir),
        "KEYGATE_HOST": HOST,
        "KEYGATE_CONFIG": str(config),
        "KEYGATE_DRAIN_S": "5",
        "ACCESS_PASSWORD": secrets.token_urlsafe(12),
        "ADMIN_PASSWORD": secrets.token_urlsafe(12),
    }
    for name in BUILTINS:  # every provider, with keys or not, reaches only the mock
        env[env_names(name, "BASE_URL")[0]] = mock_url
    for name in PROVIDERS:
        env[env_names(name, "API_KEYS")[0]] = ",".join(fake_keys(name))
    os.environ.update(env)
    return env


def _script_mock(mock: Any) -> None:
    """Each fake key answers in its provider's shape, names itself in the text, lists its
    provider's models and announces its budget as the provider would."""
    for provider, (models, style) in PROVIDERS.items():
        for i, key in enumerate(fake_keys(provider), 1):
            mock.set_behavior(
                key, text=f"Hello from the mock {provider} (demo key {i}).", models=models
            )
            if style is not None:
                mock.set_limit(
                    key,
                    requests=MOCK_REQUESTS_PER_MIN,
                    tokens=MOCK_TOKENS_PER_MIN,
                    window_s=60,
                    style=style,
                )


def instructions(base: str, mock_url: str, password: str, admin: str, data: str) -> str:
    """What the demo prints once it serves: where things are and lines that work as shown."""
    body = {
        "model": "groq/llama-3.1-8b-instant",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    curl = shlex.join(
        [
            "curl",
            "-sS",
            f"{base}/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {password}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ]
    )
    sdk = (
        "from openai import OpenAI; "
        f'client = OpenAI(base_url="{base}/v1", api_key="{password}"); '
        'print(client.chat.completions.create(model="claude/claude-sonnet-4-5", '
        'messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content)'
    )
    providers = ", ".join(PROVIDERS)
    return "\n".join(
        [
            "",
            "keygate demo: the gateway and mock providers on loopback; nothing leaves this machine",
            f"  gateway           {base}",
            f"  gateway password  {password}",
            f"  admin page        {base}/admin/",
            f"  admin password    {admin}",
            f"  providers         {providers}: {KEYS_PER_PROVIDER} fake keys each, all answered by",
            f"  mock upstream     {mock_url}   (what keygate sent it: {mock_url}/_mock/requests)",
            f"  data              {data}",
            "",
            "Try it (a plain model name goes to cerebras; provider/model picks the provider;",
            'claude/... is translated to Anthropic\'s API; "fast" and "smart" are aliases):',
            "",
            f"  {curl}",
            "",
            f"  python3 -c {shlex.quote(sdk)}",
            "",
            "Ctrl-C stops the gateway and the mock.",
            "",
        ]
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from keygate.config.settings import load_settings
    from keygate.observe.logs import setup_logging
    from keygate.server.lifecycle import serve
    from keygate.server.listen import bind_or_explain, server_options
    from keygate.testing.mock_upstream import MockUpstream

    data_dir, temporary = _data_dir(args.data_dir)
    mock = MockUpstream(host=HOST, port=args.mock_port, max_records=1000)
    sockets: list[Any] = []
    try:
        (data_dir / MARKER).write_text("the data of `keygate demo`: fake keys, a mock upstream\n")
        config = data_dir / "demo.yaml"
        config.write_text(
            "# keygate demo's config, written for this run\n" + yaml.safe_dump(CONFIG)
        )
        mock.start()
        _script_mock(mock)
        env = _demo_environment(data_dir, config, mock.url)
        settings = load_settings(os.environ, None, {"port": args.port, "workers": 1})
        bound = bind_or_explain(settings)
        if bound is None:
            return 1
        sockets = bound
        os.environ["KEYGATE_PORT"] = str(settings.port)  # the bound one, for a reload
        base = f"http://{HOST}:{settings.port}"
        where = f"{data_dir} (removed on exit)" if temporary else str(data_dir)
        text = instructions(base, mock.url, env["ACCESS_PASSWORD"], env["ADMIN_PASSWORD"], where)
        setup_logging(settings.log_level, settings.log_format)
        return serve(_app(settings, text), server_options(settings), data_dir, sockets)
    finally:
        for sock in sockets:
            sock.close()
        mock.stop()
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


def _app(settings: Any, text: str) -> Any:
    """The gateway's app, which prints the demo's instructions once it has started (after
    its banner)."""
    from keygate.server.app import App

    class DemoApp(App):
        async def _lifespan(self, receive: Any, send: Any) -> None:
            async def send_then_tell(message: dict[str, Any]) -> None:
                await send(message)
                if message["type"] == "lifespan.startup.complete":
                    print(text, flush=True)

            await super()._lifespan(receive, send_then_tell)

    return DemoApp(settings)
