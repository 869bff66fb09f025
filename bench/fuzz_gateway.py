"""Fuzz a real keygate on loopback as a hostile client and behind a hostile upstream.

    python3 bench/fuzz_gateway.py --seconds 120 [--seed N] [--max-requests N] [--keep]

Not a test (pytest does not collect bench/, CI does not run it): a bounded, re-runnable check of
what issue 32 asks of the fuzzers. It starts the project's mock upstream and one `keygate serve`
subprocess (every provider's base URL pointed at the mock, `rps: 0, max_conn: 0`, an alias and a
group under `models:`), issues client keys with model and provider lists, and then:

1. **Proxy**: one client's batch at a time, random requests with its key (prefix routes and the
   unified `/v1/...`; OpenAI, Anthropic, Responses and Gemini-native paths, odd spellings of
   them; bodies with duplicate, nested and escaped `model` keys, NaN, lone surrogates, other
   encodings, non-JSON, huge `max_tokens`; model-less GETs), plus raw-socket malformed HTTP.
   For a share of them the mock is a hostile upstream: odd budget headers (inf, nan, -1, 1e308,
   a 7,000-digit number, far resets, garbage), 429/5xx/529, streams that error or are cut.
2. **Admin API**: a schemathesis run (coverage cases, then positive and negative fuzzing)
   against the gateway's OpenAPI document, after the hostile upstream ran; `GET /api/keys`
   and `GET /api/stats` must still answer 200, before and after it.

Failures (exit status 1):
- a status >= 500 that keygate made itself: the mock did not receive that request, or
  answered every try of it below 500 and did not cut or error its stream (every request
  carries an `x-fuzz-seq` header, so the mock's records say which tries were its);
- a `Traceback` in the gateway's log (each is tied to the requests sent just before it);
- a request the mock received that the sending client's lists do not allow. The provider is
  the one whose pool key it carried; the model is read as an upstream could read it: from the
  path on Gemini's native API, else from the body with Python's json (last duplicate key
  wins; BOM, UTF-16 and UTF-32 detected), with a parser keeping the first duplicate, from the
  first JSON value of a body with trailing data, and from the form fields of a form body;
  every reading must be allowed. The lists are read here from the contract, independently
  of keygate's code (`allows`);
- the gateway password or a client key reaching the upstream;
- an admin API answer >= 500, or `/api/keys`, `/api/stats` not 200 after the hostile run.

Exit status 2: the run could not be set up. The gateway's log is kept when the run fails.

Everything listens on and talks to 127.0.0.1 only; admin cases that would point the gateway at
another address (`base_url` and the like) are rewritten to the mock's address before they are
sent. Needs the `test` and `bench` extras (`pip install -e '.[test,bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # from a checkout without `pip install -e .`

from keygate.config.catalog import BUILTINS, env_names  # noqa: E402
from keygate.testing.mock_upstream import MockUpstream, Recorded  # noqa: E402

PROVIDERS = ("cerebras", "groq", "openai", "openrouter", "gemini", "claude")
KEYS_PER_PROVIDER = 5
MARK = "x-fuzz-seq"  # every request carries its number; background fetches of keygate do not
ALIASES: dict[str, list[str]] = {
    "gpt-4o": ["openai/gpt-4o-mini"],
    "fast": ["cerebras/llama3.1-8b", "groq/llama-3.1-8b-instant", "claude/claude-3-5-haiku"],
}
CONFIG: dict[str, Any] = {
    # short cooldowns: the hostile 429s would otherwise keep most requests from the upstream
    "providers": {
        p: {
            "rps": 0,
            "max_conn": 0,
            "queue": 1000,
            "cooldown_s": 1,
            "retry_after_max_s": 2,
            "exhausted_cooldown_s": 5,
            "backoff_base_s": 0.005,
        }
        for p in PROVIDERS
    },
    "models": {
        "gpt-4o": "openai/gpt-4o-mini",
        "fast": {"strategy": "fallback", "targets": ALIASES["fast"]},
    },
}
# a default model outside a client's list: a model-less request must not be filled with it
CONFIG["providers"]["cerebras"]["default_model"] = "zai-glm-4.6"


@dataclass(frozen=True)
class Lists:
    """A client key's lists, as issued through the admin API."""

    name: str
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


CLIENTS = (
    Lists("openai-star", models=("openai/*",)),
    Lists("cerebras-one", models=("cerebras/llama3.1-8b",)),
    Lists("gemini-one", models=("gemini/gemini-2.0-flash",)),
    Lists("groq-provider", providers=("groq",)),
    Lists("alias-only", models=("fast",)),
    Lists("mixed", providers=("openrouter", "claude"), models=("gpt-4o", "openrouter/*")),
)
MASTER = Lists("master-password")  # unrestricted: only the 5xx and traceback checks apply


# --------------------------------------------------------------------------- the gateway

PASSWORD = "fuzz-gateway-password"
ADMIN_PASSWORD = "fuzz-admin-password"


class Gateway:
    """`python -m keygate serve` on loopback as the tests start it: its own data dir, config
    and log in `work`, every provider's base URL pointed at `mock`, none of the shell's
    keygate variables."""

    def __init__(self, work: Path, mock: MockUpstream, env: dict[str, str], config: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = PASSWORD
        full = {
            k: v
            for k, v in os.environ.items()
            if not k.endswith(("_API_KEYS", "_BASE_URL"))
            and not k.startswith(("KEYGATE_", "ACCESS_", "AUTH_", "ADMIN_"))
        }
        full.update({env_names(name, "BASE_URL")[0]: mock.url for name in BUILTINS})
        full.update(
            KEYGATE_DATA_DIR=str(work / "data"),
            KEYGATE_HOST="127.0.0.1",
            KEYGATE_PORT=str(self.port),
            ACCESS_PASSWORD=PASSWORD,
            ADMIN_PASSWORD=ADMIN_PASSWORD,
            PYTHONUNBUFFERED="1",
        )
        full.update(env)
        cfg = work / "keygate-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.log_path = work / "keygate.log"
        argv = [sys.executable, "-m", "keygate", "serve", "--config", str(cfg)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keygate exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"keygate did not become healthy:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {PASSWORD}"}

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_PASSWORD}"}

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.admin(), timeout=30, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --------------------------------------------------------------------------- list semantics


def allows(lists: Lists, provider: str, model: str) -> bool:
    """Whether `lists` let `provider` serve `model` ('' for a request naming none), written
    from the contract, not from keygate's code: `p/*` is provider p, any model; `p/m` is
    provider p and model m as p receives it; a plain name is a model of that name on any
    provider, or, for an alias or group, its targets; a model-less request goes only to a
    provider the lists name."""
    if lists.providers and provider not in lists.providers:
        return False
    if not lists.models or "*" in lists.models:
        return True
    if not model:
        named = set(lists.providers) | {m.split("/", 1)[0] for m in lists.models if "/" in m}
        return provider in named
    for pattern in lists.models:
        if "/" in pattern:
            p, _, m = pattern.partition("/")
            if p == provider and (m == "*" or m == model):
                return True
            continue
        if pattern == model:
            return True
        for target in ALIASES.get(pattern, ()):
            p, _, m = target.partition("/")
            if p == provider and m == model:
                return True
    return False


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _top_models(doc: Any) -> set[str]:
    if isinstance(doc, list):  # read as a batch: each object's model
        found = set().union(*(_top_models(d) for d in doc if isinstance(d, dict)))
        return found or {""}
    if not isinstance(doc, dict):
        return {""}
    value = doc.get("model")
    if value is None:
        return {""}
    return {value if isinstance(value, str) else json.dumps(value)}


def body_models(body: bytes, headers: dict[str, str]) -> set[str]:
    """Every model an upstream parser could read from `body` ('' for none): Python's json
    (keeps the last duplicate key; detects BOM, UTF-16 and UTF-32), a parser keeping the
    first, the same on the text with bad UTF-8 replaced, a decoder that stops after the first
    value, and form fields for form bodies."""
    if not body:
        return {""}
    if headers.get("content-encoding", "").lower() == "gzip":
        with contextlib.suppress(OSError, EOFError):
            body = gzip.decompress(body)
    found: set[str] = set()
    text = body.decode("utf-8", "replace")
    attempts: list[Callable[[], Any]] = [
        lambda: json.loads(body),
        lambda: json.loads(body, object_pairs_hook=_first_wins),
        lambda: json.loads(text),
        lambda: json.loads(text, object_pairs_hook=_first_wins),
        lambda: json.JSONDecoder().raw_decode(text.lstrip("\ufeff \t\r\n"))[0],
        lambda: json.JSONDecoder(object_pairs_hook=_first_wins).raw_decode(
            text.lstrip("\ufeff \t\r\n")
        )[0],
    ]
    for attempt in attempts:
        with contextlib.suppress(ValueError, RecursionError):
            found |= _top_models(attempt())
    ctype = headers.get("content-type", "").lower()
    if "x-www-form-urlencoded" in ctype:
        for value in urllib.parse.parse_qs(text).get("model", []):
            found.add(value)
    if "multipart/form-data" in ctype:
        for m in re.finditer(r'name="?model"?\r?\n(?:[^\r\n]+\r?\n)*\r?\n([^\r\n]*)', text):
            found.add(m.group(1))
    found.discard("")
    return found or {""}


_VERSION = re.compile(r"^/v\d+(?:alpha|beta)?\d*/", re.IGNORECASE)


def _dot_segments(path: str) -> str:
    out: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if len(out) > 1:
                out.pop()
        elif seg != ".":
            out.append(seg)
    return "/".join(out)


def gemini_path_models(path: str, raw_path: str) -> set[str] | None:
    """The models a Gemini-native path names, in every reading an upstream might make of it
    (decoded or not, slashes collapsed or not, dot segments resolved, `models` in any case);
    None when the path is not a native one (the OpenAI-compatible `/v1beta/openai/...`)."""
    readings: set[str] = set()
    for p in {path, raw_path, urllib.parse.unquote(raw_path)}:
        for q in {p, re.sub("/{2,}", "/", p)}:
            for r in {q, _dot_segments(q)}:
                readings.add(r)
    models: set[str] = set()
    native = False
    for r in readings:
        v = _VERSION.match(r)
        if v is None:
            continue
        rest = r[v.end() :]
        if not rest.lower().startswith(("models", "tunedmodels")):
            continue  # the model list of the OpenAI-compatible API, files, operations
        native = True
        last = rest.rpartition("/")
        if ":" in last[2]:  # a method: `models/x:generateContent`
            rest = rest[: rest.rindex(":")]
        if rest.lower().rstrip("/") == "models":
            models.add("")  # the model list
        elif rest.lower().startswith("models/"):
            models.add(rest[len("models/") :].lstrip("/"))
        else:
            models.add(rest)  # tunedModels/x and the like: a name no list holds
    return models if native else None


def received_models(rec: Recorded, provider: str) -> tuple[set[str], str]:
    """What the upstream was asked to serve: (models, where they were read)."""
    if provider == "gemini":
        named = gemini_path_models(rec.path, rec.raw_path or rec.path)
        if named is not None:
            return named, "path"
        if ":" in rec.path.rpartition("/")[2]:
            return {""}, "path"  # a method on something that is not a model: none is served
        # Google names a model `models/x` as well as `x`: the same model
        return {m.removeprefix("models/") for m in body_models(rec.body, rec.headers)}, "body"
    return body_models(rec.body, rec.headers), "body"


# --------------------------------------------------------------------------- the hostile upstream

NUMBERS = [
    "inf", "-inf", "Infinity", "nan", "NaN", "-1", "0", "1e308", "-1e308", "1e309", "9" * 7000,
    "", " ", "1.5", "0x10", "1_000", "\u0661\u0662\u0663", "+5", "5 5",
    "18446744073709551616", "9223372036854775808", "-0",
]  # fmt: skip
RESETS = [
    "1e308s", "1e308", "-5s", "nans", "infs", "1h2m3.5s", "999999999h", "garbage", "1e308ms",
    "2099-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "-1", "0s",
    "Fri, 31 Dec 9999 23:59:59 GMT", "9" * 7000 + "s",
]  # fmt: skip
RETRY_AFTER = ["1e308", "-1", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT",
               "Fri, 31 Dec 9999 23:59:59 GMT", "9" * 7000, "", "0", "1.5"]  # fmt: skip
RETRY_AFTER_MS = ["-5", "1e308", "nan", "inf", "9" * 7000, "0.1", ""]
REMAINING = [
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests-day", "x-ratelimit-remaining-tokens-minute",
    "x-ratelimit-limit-requests-day", "x-ratelimit-limit-tokens-minute",
    *(f"anthropic-ratelimit-{w}-{k}" for w in ("requests", "tokens", "input-tokens",
      "output-tokens") for k in ("remaining", "limit")),
]  # fmt: skip
RESET_NAMES = [
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset-requests-day",
    "x-ratelimit-reset-tokens-minute", "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
]  # fmt: skip
# the combinations issue 32 names, always among the choices
NAMED = [
    {"x-ratelimit-remaining-requests": "inf"},
    {"x-ratelimit-remaining-requests": "nan"},
    {"x-ratelimit-remaining-requests": "-1"},
    {"x-ratelimit-remaining-tokens": "1e308"},
    {"x-ratelimit-remaining-requests": "9" * 7000},
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1e308s"},
    {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "garbage",
    },
    {"retry-after": "1e308"},
    {"retry-after-ms": "-5"},
]


def hostile_knobs(rng: random.Random) -> dict[str, Any]:
    headers: dict[str, str] = dict(rng.choice(NAMED))
    for _ in range(rng.randint(0, 4)):
        kind = rng.random()
        if kind < 0.45:
            headers[rng.choice(REMAINING)] = rng.choice(NUMBERS)
        elif kind < 0.8:
            headers[rng.choice(RESET_NAMES)] = rng.choice(RESETS)
        elif kind < 0.9:
            headers["retry-after"] = rng.choice(RETRY_AFTER)
        else:
            headers["retry-after-ms"] = rng.choice(RETRY_AFTER_MS)
    knobs: dict[str, Any] = {"headers": headers}
    roll = rng.random()
    if roll < 0.35:
        knobs["status"] = rng.choice([429, 429, 500, 502, 503, 529])
    elif roll < 0.47:
        knobs["stream_error"] = True
    elif roll < 0.59:
        knobs["reset_after_chunks"] = rng.randint(0, 2)
    elif roll < 0.69:
        knobs["error_after_chunks"] = rng.randint(0, 2)
    elif roll < 0.75:
        knobs["echo_key"] = True
    elif roll < 0.8:
        knobs["content_encoding"] = "gzip"
    return knobs


# --------------------------------------------------------------------------- requests

MODELS: list[Any] = [
    "llama3.1-8b", "gpt-oss-120b", "zai-glm-4.6", "llama-3.1-8b-instant", "gpt-4o",
    "gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4o-mini", "groq/llama-3.1-8b-instant",
    "cerebras/llama3.1-8b", "cerebras/gpt-oss-120b", "gemini/gemini-2.0-flash",
    "gemini/gemini-2.5-pro", "gemini-2.0-flash", "gemini-2.5-pro", "models/gemini-2.0-flash",
    "gemini/models/gemini-2.0-flash", "openrouter/openai/gpt-4o", "openrouter/meta-llama/llama-3.1-8b",
    "claude/claude-3-5-haiku", "claude-3-5-haiku", "fast", "FAST", "Fast", "OpenAI/gpt-4o",
    "openai//gpt-4o", "openai/", "/gpt-4o", " openai/gpt-4o", "openai/gpt-4o ", "openai/*", "*",
    "", "openai%2Fgpt-4o", "groq/fast", "fast/x", "openai/gpt-4o\u0000", "\uff4fpenai/gpt-4o",
    "gpt-4o\n", "x" * 7000, "openai/../groq/llama", "groq/../openai/gpt-4o", "openai\\gpt-4o",
    "openai/gpt-4o:generateContent", "gemini/tunedModels/x", "cerebras/", "groq",
    123, None, [], {"a": 1}, True, ["openai/gpt-4o"], 1e308,
]  # fmt: skip
GEMINI_MODELS = [
    "gemini-2.0-flash", "gemini-2.5-pro", "openai/gpt-4o", "groq/llama-3.1-8b-instant",
    "cerebras/llama3.1-8b", "fast", "gpt-4o", "x",
]  # fmt: skip
MAX_TOKENS: list[Any] = [16, 0, -1, 1e308, 2**63, 2**64, 1.5, "100", None, True, 10**30]
MAX_TOKENS_RAW = [b"1e308", b"1" + b"0" * 400, b"9" * 7000, b"-0", b"1E400", b"NaN", b"Infinity"]
MESSAGES = [{"role": "user", "content": "hi"}]
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@dataclass
class Req:
    kind: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    raw: bytes | None = None  # a raw-socket request: these bytes as they are
    seq: int = 0

    def describe(self, key: str, shown: str) -> str:
        if self.raw is not None:
            return f"raw bytes {self.raw.replace(key.encode(), shown.encode())[:600]!r}"
        headers = {k: v.replace(key, shown) for k, v in self.headers.items()}
        path = self.path.replace(key, shown)
        return f"{self.method} {path} headers={headers} body={self.body[:600]!r}"


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


# models each client may well use, drawn half of the time so that many requests go upstream
FAVOURED: dict[str, list[str]] = {
    "openai-star": ["openai/gpt-4o", "openai/gpt-4o-mini", "gpt-4o", "openai/o3"],
    "cerebras-one": ["llama3.1-8b", "cerebras/llama3.1-8b"],
    "gemini-one": ["gemini/gemini-2.0-flash", "gemini-2.0-flash"],
    "groq-provider": ["groq/llama-3.1-8b-instant", "groq/anything", "llama-3.1-8b-instant"],
    "alias-only": ["fast"],
    "mixed": ["gpt-4o", "openrouter/openai/gpt-4o", "claude/gpt-4o", "openrouter/x"],
    MASTER.name: ["fast", "gpt-4o", "groq/llama-3.1-8b-instant", "claude/claude-3-5-haiku"],
}


class Generator:
    """Random requests for one client key (`key`; the master password for MASTER)."""

    def __init__(self, rng: random.Random, key: str, name: str) -> None:
        self.rng = rng
        self.key = key
        self.favoured = FAVOURED.get(name, [])

    # -- pieces

    def model(self) -> Any:
        if self.favoured and self.rng.random() < 0.5:
            return self.rng.choice(self.favoured)
        return self.rng.choice(MODELS)

    def auth(self, headers: dict[str, str], path: str) -> str:
        how = self.rng.random()
        if how < 0.6:
            headers["Authorization"] = f"Bearer {self.key}"
        elif how < 0.75:
            headers["x-api-key"] = self.key
        elif how < 0.9:
            headers["x-goog-api-key"] = self.key
        else:
            path += ("&" if "?" in path else "?") + "key=" + urllib.parse.quote(self.key)
        return path

    def family_body(self, family: str, model: Any, with_model: bool = True) -> dict[str, Any]:
        rng = self.rng
        doc: dict[str, Any] = {"model": model} if with_model else {}
        if family == "chat":
            doc["messages"] = MESSAGES
        elif family == "completions":
            doc["prompt"] = "hi"
        elif family == "embeddings":
            doc["input"] = "hi"
        elif family == "messages":
            doc["max_tokens"] = 16
            doc["messages"] = MESSAGES
        elif family == "count_tokens":
            doc["messages"] = MESSAGES
        elif family == "responses":
            doc["input"] = "hi"
        elif family == "gemini":
            doc.update(GEMINI_BODY)
        if rng.random() < 0.4 and family != "gemini":
            doc["stream"] = rng.choice([True, True, False, "true", 1, None])
        if rng.random() < 0.3:
            field_name = {"gemini": "generationConfig", "responses": "max_output_tokens"}.get(
                family, rng.choice(["max_tokens", "max_completion_tokens"])
            )
            value = rng.choice(MAX_TOKENS)
            doc[field_name] = {"maxOutputTokens": value} if family == "gemini" else value
        return doc

    def encode(self, doc: dict[str, Any], family: str) -> tuple[bytes, str]:
        """The body's bytes, mostly plain JSON, often with one trick; and what trick."""
        rng = self.rng
        body = _json(doc)
        roll = rng.random()
        if roll < 0.45:
            return body, "json"
        other = _json(self.model())
        tricks: list[tuple[str, Callable[[], bytes]]] = [
            ("dup-model-last", lambda: body[:-1] + b',"model":' + other + b"}"),
            ("dup-model-first", lambda: b'{"model":' + other + b"," + body[1:]),
            ("escaped-key", lambda: body[:-1] + b',"mod\\u0065l":' + other + b"}"),
            ("escaped-key-first", lambda: b'{"\\u006dodel":' + other + b"," + body[1:]),
            ("nested-model", lambda: body[:-1] + b',"extra":{"model":' + other + b"}}"),
            ("nan", lambda: body[:-1] + b',"t":NaN}'),
            ("nan-dup", lambda: body[:-1] + b',"t":NaN,"model":' + other + b"}"),
            ("surrogate-dup", lambda: body[:-1] + b',"x":"\\ud800","model":' + other + b"}"),
            ("surrogate-first-dup", lambda: b'{"model":' + other + b',"x":"\\udfff",' + body[1:]),
            ("inf", lambda: body[:-1] + b',"t":Infinity,"u":-Infinity}'),
            ("1e400", lambda: body[:-1] + b',"t":1e400}'),
            ("max-tokens-raw", lambda: body[:-1] + b',"max_tokens":' + rng.choice(MAX_TOKENS_RAW) + b"}"),
            ("bad-utf8", lambda: body[:-1] + b',"x":"\xff\xfe"}'),
            ("bom", lambda: b"\xef\xbb\xbf" + body),
            ("utf16", lambda: body.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")),
            ("utf32", lambda: body.decode("utf-8", "surrogatepass").encode("utf-32", "surrogatepass")),
            ("trailing-garbage", lambda: body + b' {"model":' + other + b"}"),
            ("trailing-comma", lambda: body[:-1] + b",}"),
            ("comment", lambda: b"/*x*/" + body),
            ("array", lambda: b"[" + body + b"]"),
            ("null", lambda: b"null"),
            ("empty", lambda: b""),
            ("truncated", lambda: body[: rng.randint(0, max(0, len(body) - 1))]),
            ("deep", lambda: body[:-1] + b',"d":' + b"[" * 5000 + b"]" * 5000 + b"}"),
            ("escaped-slash", lambda: body.replace(b"/", b"\\/")),
            ("unicode-escaped-value", lambda: re.sub(
                rb'"model":"([^"\\])', lambda m: b'"model":"\\u%04x' % m.group(1)[0], body, count=1)),
            ("whitespace", lambda: b" \r\n\t" + body.replace(b":", b" : ")),
            ("form", lambda: urllib.parse.urlencode(
                {"model": str(doc.get("model")), "x": "1"}).encode()),
            ("gzip", lambda: gzip.compress(body)),
        ]  # fmt: skip
        name, make = rng.choice(tricks)
        return make(), name

    def odd_path(self, path: str) -> str:
        """One or two odd spellings of `path`."""
        rng = self.rng
        for _ in range(rng.choice([1, 1, 2])):
            choice = rng.randrange(14)
            if choice == 0:
                path = path.replace("/models/", rng.choice(["/models//", "//models/"]), 1)
            elif choice == 1:
                path = path.replace("/models/", rng.choice(["/models%2F", "/models%2f"]), 1)
            elif choice == 2:
                segs = path.split("/")
                i = rng.randrange(1, len(segs)) if len(segs) > 1 else 0
                segs[i] = segs[i].upper() if rng.random() < 0.5 else segs[i].capitalize()
                path = "/".join(segs)
            elif choice == 3:
                segs = path.split("/")
                i = rng.randrange(1, len(segs)) if len(segs) > 1 else 0
                segs.insert(i, rng.choice([".", "x/..", "%2e", "%2E%2E/x", ".."]))
                path = "/".join(segs)
            elif choice == 4:
                path = path.replace("/models/", "/tunedModels/", 1)
            elif choice == 5:
                path = path.replace(":", rng.choice(["%3A", "%3a", "::"]), 1)
            elif choice == 6:
                path = path + rng.choice(["/", ";x=1", "%00", "%20", "#frag", "?alt=sse", "?"])
            elif choice == 7:
                path = "/" + rng.choice(PROVIDERS) + "/.." + path
            elif choice == 8:
                path = path.replace("/", "%2F", rng.randint(1, 3))
            elif choice == 9:
                path = path.replace("/v1/", rng.choice(["/v1//", "/v1/./", "//v1/", "/V1/"]), 1)
            elif choice == 10:
                path = path.replace("models", "%6dodels", 1)
            elif choice == 11:
                path = path.replace("/models/", "/models/%252F", 1)
            elif choice == 12:
                path = "/" + "/".join(urllib.parse.quote(s, safe="") for s in path.split("/")[1:])
            else:
                path = path.replace("/", "/" * rng.randint(2, 4), 1)
        return path

    # -- kinds

    def next(self) -> Req:
        rng = self.rng
        roll = rng.random()
        if roll < 0.22:
            return self.prefix()
        if roll < 0.42:
            return self.unified()
        if roll < 0.62:
            return self.gemini()
        if roll < 0.77:
            return self.modelless()
        if roll < 0.92:
            return self.body_tricks()
        return self.raw()

    def _req(self, kind: str, method: str, path: str, family: str, doc: Any) -> Req:
        headers = {"Content-Type": "application/json"}
        if self.rng.random() < 0.1:
            headers["Content-Type"] = self.rng.choice(
                ["text/plain", "application/x-www-form-urlencoded", "application/JSON",
                 "application/json; charset=utf-16", "multipart/form-data; boundary=x", ""]
            )  # fmt: skip
        if family in ("messages", "count_tokens") or self.rng.random() < 0.1:
            headers["anthropic-version"] = "2023-06-01"
        path = self.auth(headers, path)
        body = b"" if doc is None else _json(doc)
        return Req(kind, method, path, headers, body)

    def prefix(self) -> Req:
        rng = self.rng
        provider = rng.choice(PROVIDERS)
        family, rest = rng.choice(
            [("chat", "/v1/chat/completions"), ("messages", "/v1/messages"),
             ("responses", "/v1/responses"), ("completions", "/v1/completions"),
             ("embeddings", "/v1/embeddings"), ("count_tokens", "/v1/messages/count_tokens"),
             ("chat", ""), ("chat", "/")]
        )  # fmt: skip
        path = f"/{provider}{rest}"
        if rng.random() < 0.25:
            path = self.odd_path(path)
        return self._req("prefix", "POST", path, family, self.family_body(family, self.model()))

    def unified(self) -> Req:
        rng = self.rng
        family, path = rng.choice(
            [("chat", "/v1/chat/completions"), ("messages", "/v1/messages"),
             ("responses", "/v1/responses"), ("completions", "/v1/completions"),
             ("embeddings", "/v1/embeddings"), ("count_tokens", "/v1/messages/count_tokens")]
        )  # fmt: skip
        if rng.random() < 0.2:
            path = self.odd_path(path)
        return self._req("unified", "POST", path, family, self.family_body(family, self.model()))

    def gemini(self) -> Req:
        rng = self.rng
        model = rng.choice(GEMINI_MODELS)
        method = rng.choice(
            ["generateContent", "streamGenerateContent", "countTokens", "embedContent"]
        )
        where = rng.random()
        if where < 0.5:
            prefix = "/gemini/v1beta"
        elif where < 0.7:
            prefix = f"/{rng.choice(PROVIDERS)}/v1beta"
        else:
            prefix = rng.choice(["/v1beta", "/v1", "/gemini/v1", "/gemini/v1alpha"])
        path = f"{prefix}/models/{model}:{method}"
        if method == "streamGenerateContent" and rng.random() < 0.6:
            path += "?alt=sse"
        if rng.random() < 0.45:
            path = self.odd_path(path)
        doc = self.family_body("gemini", rng.choice(GEMINI_MODELS), with_model=rng.random() < 0.3)
        req = self._req("gemini-native", "POST", path, "gemini", doc)
        if rng.random() < 0.2:
            req.body, _ = self.encode(doc, "gemini")
        return req

    def modelless(self) -> Req:
        rng = self.rng
        provider = rng.choice(PROVIDERS)
        method, path, doc = rng.choice(
            [
                ("GET", "/v1/models", None),
                ("GET", f"/{provider}/v1/models", None),
                ("GET", f"/{provider}/v1/models/{rng.choice(GEMINI_MODELS)}", None),
                ("GET", "/gemini/v1beta/models", None),
                ("GET", f"/gemini/v1beta/models/{rng.choice(GEMINI_MODELS)}", None),
                ("GET", "/v1beta/models", None),
                ("GET", f"/{provider}", None),
                ("POST", f"/{provider}/v1/chat/completions", {"messages": MESSAGES}),
                ("POST", f"/{provider}/v1/messages", {"max_tokens": 5, "messages": MESSAGES}),
                ("POST", "/v1/chat/completions", {"messages": MESSAGES}),
                ("POST", f"/{provider}", {"messages": MESSAGES}),
                ("DELETE", f"/{provider}/v1/responses/resp_1", None),
                ("GET", "/v1/responses/resp_x", None),
                ("HEAD", f"/{provider}/v1/models", None),
                ("OPTIONS", f"/{provider}/v1/chat/completions", None),
                ("PUT", f"/{provider}/v1/files/x", {"model": self.model()}),
                ("GET", f"/{provider}/v1/chat/completions", None),
                ("PATCH", f"/{provider}/v1/fine_tuning/jobs", {"x": 1}),
                ("GET", f"/{provider}/v1beta/cachedContents", None),
            ]
        )
        if rng.random() < 0.2:
            path = self.odd_path(path)
        req = self._req("model-less", method, path, "chat", doc)
        if method in ("GET", "HEAD", "OPTIONS"):
            req.headers.pop("Content-Type", None)
        return req

    def body_tricks(self) -> Req:
        rng = self.rng
        provider = rng.choice(PROVIDERS)
        family, path = rng.choice(
            [("chat", f"/{provider}/v1/chat/completions"), ("chat", "/v1/chat/completions"),
             ("messages", f"/{provider}/v1/messages"), ("messages", "/v1/messages"),
             ("responses", "/v1/responses"), ("responses", f"/{provider}/v1/responses"),
             ("embeddings", "/v1/embeddings"), ("count_tokens", "/v1/messages/count_tokens"),
             ("gemini", f"/gemini/v1beta/models/{rng.choice(GEMINI_MODELS)}:generateContent")]
        )  # fmt: skip
        doc = self.family_body(family, self.model())
        req = self._req("odd-body", "POST", path, family, doc)
        req.body, trick = self.encode(doc, family)
        req.kind = f"odd-body:{trick}"
        if trick == "form":
            req.headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif trick == "gzip":
            req.headers["Content-Encoding"] = "gzip"
        return req

    def raw(self) -> Req:
        """Malformed or hostile HTTP/1.1, written byte by byte."""
        rng = self.rng
        provider = rng.choice(PROVIDERS)
        body = _json({"model": self.model(), "messages": MESSAGES})
        auth = f"Authorization: Bearer {self.key}\r\n".encode()
        path = rng.choice(
            [f"/{provider}/v1/chat/completions", "/v1/chat/completions",
             "/gemini/v1beta/models/gemini-2.5-pro:generateContent", f"/{provider}/v1/models"]
        ).encode()  # fmt: skip
        cl = b"Content-Length: %d\r\n" % len(body)
        mark = b"%s: {seq}\r\n" % MARK.encode()
        host = b"Host: 127.0.0.1\r\n"
        close = b"Connection: close\r\n"
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        templates = [
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + cl + cl + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Content-Length: %d\r\n" % len(body) + b"Content-Length: 3\r\n" + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + cl + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n" + chunked,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n" + close + b"\r\n" + chunked,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Transfer-Encoding: gzip, chunked\r\n" + close + b"\r\n" + chunked,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n" + b"%x;ext=1\r\n%s\r\n0\r\nTrailer: x\r\n\r\n" % (len(body), body),
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Transfer-Encoding: chunked\r\n" + close + b"\r\nzz\r\n" + body + b"\r\n0\r\n\r\n",
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Content-Length: -1\r\n" + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Content-Length: 1e3\r\n" + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Content-Length: 99999999999999999999\r\n" + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + b"X-Folded: a\r\n b\r\n" + mark + cl + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Bad\x00Header: v\r\n" + cl + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"X: \xff\xfe\r\n" + cl + close + b"\r\n" + body,
            b"POST http://127.0.0.1%s HTTP/1.1\r\n" % path + host + auth + mark + cl + close + b"\r\n" + body,
            b"POST //%s HTTP/1.1\r\n" % path + host + auth + mark + cl + close + b"\r\n" + body,
            b"OPTIONS * HTTP/1.1\r\n" + host + auth + mark + close + b"\r\n",
            b"CONNECT 127.0.0.1:443 HTTP/1.1\r\n" + host + auth + mark + close + b"\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST %s HTTP/1.0\r\n" % path + auth + mark + cl + b"\r\n" + body,
            b"POST %s HTTP/9.9\r\n" % path + host + auth + mark + cl + close + b"\r\n" + body,
            b"post %s HTTP/1.1\r\n" % path + host + auth + mark + cl + close + b"\r\n" + body,
            b"FOO %s HTTP/1.1\r\n" % path + host + auth + mark + cl + close + b"\r\n" + body,
            b"POST %s?key=%s HTTP/1.1\r\n" % (path, self.key.encode()) + host + mark + cl + close + b"\r\n" + body,
            b"POST /gemini/v1beta/models/gemini 2.5:generateContent HTTP/1.1\r\n" + host + auth + mark + cl + close + b"\r\n" + body,
            b"POST /gemini/v1beta/models/\xff\xfe:generateContent HTTP/1.1\r\n" + host + auth + mark + cl + close + b"\r\n" + body,
            b"GET /v1/models HTTP/1.1\r\n" + host + auth + mark + b"X-Big: " + b"a" * 70000 + b"\r\n" + close + b"\r\n",
            b"GET /v1/models HTTP/1.1\r\n" + host + auth + mark + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + close + b"\r\n",
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + b"Expect: 100-continue\r\n" + cl + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + cl + b"\r\n" + body + b"GET /groq/v1/models HTTP/1.1\r\n" + host + auth + mark + close + b"\r\n",
            b"POST %s HTTP/1.1\r\n" % path + host + auth + mark + cl + b"\r\n" + body + b"POST /openai/v1/chat/completions HTTP/1.1\r\n" + host + auth + mark + cl + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\r\nHost: a\r\nHost: b\r\n" % path + auth + mark + cl + close + b"\r\n" + body,
            b"POST %s HTTP/1.1\n" % path + b"Host: x\n" + auth.replace(b"\r\n", b"\n") + mark.replace(b"\r\n", b"\n") + cl.replace(b"\r\n", b"\n") + b"Connection: close\n\n" + body,
            b"\r\n\r\nPOST %s HTTP/1.1\r\n" % path + host + auth + mark + cl + close + b"\r\n" + body,
            b"G\x00T / HTTP/1.1\r\n\r\n",
            b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        ]  # fmt: skip
        data = bytearray(rng.choice(templates))
        if rng.random() < 0.25:  # random byte damage on top
            for _ in range(rng.randint(1, 4)):
                op, at = rng.random(), rng.randrange(len(data))
                if op < 0.4:
                    data[at] = rng.randrange(256)
                elif op < 0.7:
                    data[at:at] = rng.choice([b"\r\n", b"\n", b" ", b":", b"\x00", b"%", b"/"])
                else:
                    del data[at : at + rng.randint(1, 8)]
        return Req("raw", "", "", {}, raw=bytes(data))


# --------------------------------------------------------------------------- sending


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection closed, timeout)
    body: bytes
    error: str = ""
    statuses: list[int] = field(default_factory=list)  # raw: every status line seen


class Sender:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(self, req: Req) -> Answer:
        if req.raw is not None:
            return self._raw(req.raw.replace(b"{seq}", str(req.seq).encode()))
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn = self.conn
        try:
            conn.putrequest(req.method, req.path, skip_accept_encoding=True)
            for name, value in req.headers.items():
                conn.putheader(name, value)
            conn.putheader(MARK, str(req.seq))
            if req.body or req.method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(req.body)))
            conn.endheaders(req.body or None)
            resp = conn.getresponse()
            body = resp.read()
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return Answer(resp.status, body)
        except ValueError as exc:  # InvalidURL, a header outside latin-1: send it raw
            self.close()
            return Answer(-1, b"", f"unsendable: {exc}")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(0, b"", f"{type(exc).__name__}: {exc}")

    def _raw(self, data: bytes) -> Answer:
        chunks: list[bytes] = []
        error = ""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=3) as sock:
                sock.sendall(data)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                sock.settimeout(1.5)
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except TimeoutError:
            error = "timeout"
        except OSError as exc:
            error = type(exc).__name__
        out = b"".join(chunks)
        statuses = [int(s) for s in re.findall(rb"(?m)^HTTP/1\.[01] (\d{3})", out)]
        return Answer(statuses[-1] if statuses else 0, out, error, statuses)


# --------------------------------------------------------------------------- the run


@dataclass
class Findings:
    sent: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # time spent sending, per kind
    statuses: Counter[int] = field(default_factory=Counter)
    upstream_5xx: int = 0  # relayed, or keygate's 502/503/504 after the mock failed the try
    received: int = 0
    background: int = 0
    hostile: int = 0
    conn_errors: Counter[str] = field(default_factory=Counter)
    gateway_5xx: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    unmarked: int = 0
    admin_sent: Counter[str] = field(default_factory=Counter)
    admin_statuses: Counter[int] = field(default_factory=Counter)
    admin_5xx: list[str] = field(default_factory=list)
    admin_checks: list[str] = field(default_factory=list)
    admin_notes: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    traceback_causes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _wait_ended(mock: MockUpstream, seq: int, timeout: float = 2.0) -> list[Recorded]:
    """The mock's records once every one carrying `seq` has ended (its status is final)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = mock.records()
        mine = [r for r in recs if r.headers.get(MARK) == str(seq)]
        if all(r.ended is not None for r in mine) or time.monotonic() > deadline:
            return recs
        time.sleep(0.002)


class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.f = Findings()
        self.mock = MockUpstream(max_records=5000).start()
        self.pool: dict[str, str] = {}
        env: dict[str, str] = {}
        for p in PROVIDERS:
            keys = [
                f"fz-{p}-pool-{i:04d}-{self.rng.getrandbits(40):010x}"
                for i in range(KEYS_PER_PROVIDER)
            ]
            env[f"{p.upper()}_API_KEYS"] = ",".join(keys)
            self.pool.update(dict.fromkeys(keys, p))
        try:
            self.gw = Gateway(work, self.mock, env, CONFIG)
        except BaseException:
            self.mock.stop()
            raise
        self.keys: dict[str, str] = {MASTER.name: self.gw.password}
        self.lists: dict[str, Lists] = {MASTER.name: MASTER}
        for lists in CLIENTS:
            doc: dict[str, Any] = {"name": lists.name}
            if lists.providers:
                doc["providers"] = list(lists.providers)
            if lists.models:
                doc["models"] = list(lists.models)
            r = self.gw.api("POST", "/api/clients", json=doc)
            if r.status_code != 201:
                raise RuntimeError(f"could not add client {lists.name}: {r.status_code} {r.text}")
            self.keys[lists.name] = r.json()["key"]
            self.lists[lists.name] = lists
        self.seq_client: dict[int, str] = {}
        self.seq_req: dict[int, Req] = {}  # the request being checked
        self.flagged: set[tuple[int, str, tuple[str, ...]]] = set()
        self.recent: list[tuple[int, str]] = []  # the last requests, to name a traceback's cause
        self.log_file = open(self.gw.log_path, "rb")  # noqa: SIM115 - read as the run goes
        self.log_file.seek(0, 2)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.gw.stop()
        self.log_file.close()
        with contextlib.suppress(Exception):
            self.mock.stop()

    # -- proxy

    def proxy_phase(self, until: float, max_requests: int) -> None:
        sender = Sender(self.gw.port)
        seq = 0
        names = [*self.keys]
        try:
            while time.monotonic() < until and seq < max_requests:
                name = self.rng.choice(names)
                gen = Generator(self.rng, self.keys[name], name)
                sender.close()  # a batch per client: a fresh connection, a clean mock
                self.mock.reset()
                for _ in range(self.rng.randint(20, 60)):
                    if time.monotonic() >= until or seq >= max_requests:
                        break
                    seq += 1
                    self.one(sender, gen, name, seq)
        finally:
            sender.close()

    def one(self, sender: Sender, gen: Generator, name: str, seq: int) -> None:
        req = gen.next()
        req.seq = seq
        self.seq_client[seq] = name
        self.seq_req = {seq: req}
        pushed: dict[str, Any] | None = None
        if self.rng.random() < self.args.hostile:
            pushed = hostile_knobs(self.rng)
            self.mock.push(None, times=self.rng.choice([1, 1, 2, 3]), **pushed)
            self.f.hostile += 1
        t0 = time.monotonic()
        answer = sender.send(req)
        if answer.status == -1:  # http.client would not send it: send the same as raw bytes
            req = self._as_raw(req)
            req.seq = seq
            self.seq_req = {seq: req}
            answer = sender.send(req)
        kind = req.kind.split(":")[0]
        self.f.sent[kind] += 1
        self.f.seconds[kind] = self.f.seconds.get(kind, 0.0) + time.monotonic() - t0
        if kind != req.kind:
            self.f.sent[req.kind] += 1
        recs = _wait_ended(self.mock, seq)
        self.mock.reset()  # pushes not taken are dropped: each request gets its own script
        if answer.status == 0:
            why = answer.error.split(":")[0] or "closed"
            self.f.conn_errors[f"{kind}: {why}"] += 1
        statuses = answer.statuses or ([answer.status] if answer.status else [])
        for status in statuses:
            self.f.statuses[status] += 1
        tries: dict[int, list[Recorded]] = {}
        for rec in recs:
            mark = rec.headers.get(MARK)
            if mark is None or not mark.isdigit():
                if rec.method == "GET" and rec.path.endswith("/models") and not rec.body:
                    self.f.background += 1  # model lists, key re-checks: keygate's own
                    continue
                # the mark was lost (a damaged raw request): the mock is reset after every
                # request, so it is this one's
                self.f.unmarked += 1
                mark = str(seq)
            tries.setdefault(int(mark), []).append(rec)
        for s, recs_s in tries.items():
            for rec in recs_s:
                self.check_received(s, rec)
        if any(s >= 500 for s in statuses):
            self.check_5xx(req, answer, tries.get(seq, []), pushed)
        key = self.keys.get(name, "")
        self.recent = [*self.recent[-2:], (seq, f"[{req.kind}] {req.describe(key, '<KEY>')}")]
        self.watch_log()

    def watch_log(self) -> None:
        """A traceback that appears while the run goes is tied to the requests just sent."""
        new = self.log_file.read()
        if b"Traceback" not in new:
            return
        text = new.decode("utf-8", "replace")
        error = next(
            (ln for ln in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception)\b", ln)),
            "?",
        )
        suspects = "\n      ".join(f"seq {s}: {d}" for s, d in self.recent)
        self.f.traceback_causes.append(f"{error.strip()[:300]}\n      after: {suspects}")

    def _as_raw(self, req: Req) -> Req:
        head = f"{req.method} {req.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for k, v in req.headers.items():
            head += f"{k}: {v}\r\n"
        head += f"{MARK}: {{seq}}\r\nContent-Length: {len(req.body)}\r\nConnection: close\r\n\r\n"
        raw = head.encode("utf-8", "surrogatepass") + req.body
        return Req(req.kind, req.method, req.path, req.headers, req.body, raw=raw)

    def check_received(self, seq: int, rec: Recorded) -> None:
        self.f.received += 1
        name = self.seq_client.get(seq, "?")
        lists = self.lists.get(name, MASTER)
        client_key = self.keys.get(name, "")
        where = [v for k, v in rec.headers.items() if k != MARK] + [rec.query]
        for secret in {client_key, self.gw.password} - {""}:
            if any(secret in v for v in where):
                self.f.leaks.append(
                    f"seq {seq} client {name}: its credential reached the upstream "
                    f"({rec.method} {rec.raw_path or rec.path})"
                )
        if lists is MASTER:
            return
        provider = self.pool.get(rec.key or "")
        if provider is None:
            self.f.outside.append(
                f"seq {seq} client {name}: upstream got a request with no pool key "
                f"({rec.method} {rec.raw_path or rec.path})"
            )
            return
        models, source = received_models(rec, provider)
        bad = sorted(m for m in models if not allows(lists, provider, m))
        if bad and (seq, provider, tuple(bad)) not in self.flagged:
            self.flagged.add((seq, provider, tuple(bad)))  # a retry of it is the same finding
            sent = self.seq_req.get(seq)
            what = sent.describe(client_key, "<CLIENT_KEY>") if sent else "?"
            self.f.outside.append(
                f"seq {seq} client {name} {lists.providers or ''}{lists.models or ''}: provider "
                f"{provider} got model(s) {[m[:80] for m in bad]} (read from the {source}) as "
                f"{rec.method} {rec.raw_path or rec.path}{'?' + rec.query if rec.query else ''} "
                f"body={rec.body[:300]!r}\n      sent: {what}"
            )

    def check_5xx(
        self, req: Req, answer: Answer, tries: list[Recorded], pushed: dict[str, Any] | None
    ) -> None:
        """A 5xx is the upstream's when the mock answered a try of it with a 5xx, or (for
        keygate's 502/503/504) when the mock cut or errored the stream it was sending."""
        upstream_failed = any(r.status >= 500 for r in tries)
        cut = any(not r.completed or r.disconnected for r in tries)
        script = pushed or {}
        scripted = bool(
            script.get("stream_error")
            or script.get("error_after_chunks") is not None
            or script.get("reset_after_chunks") is not None
        )
        status = answer.status
        if upstream_failed or (tries and (cut or scripted) and status in (502, 503, 504)):
            self.f.upstream_5xx += 1
            return
        name = self.seq_client.get(req.seq, "?")
        key = self.keys.get(name, "")
        self.f.gateway_5xx.append(
            f"seq {req.seq} [{req.kind}] client {name}: {req.describe(key, '<CLIENT_KEY>')}\n"
            f"      -> {answer.statuses or status} {answer.body[:400]!r}\n"
            f"      upstream tries: {[(r.method, r.path, r.status, r.completed) for r in tries]}"
            f"; scripted: {pushed}"
        )

    # -- admin

    def admin_health(self, when: str) -> None:
        with httpx.Client(base_url=self.gw.url, headers=self.gw.admin(), timeout=30) as c:
            for path in ("/api/keys", "/api/stats", "/api/providers", "/api/clients", "/healthz"):
                try:
                    r = c.get(path)
                    if r.status_code == 200:
                        r.json()
                        continue
                    problem = f"{r.status_code} {r.text[:300]}"
                except (httpx.HTTPError, ValueError) as exc:
                    problem = repr(exc)
                self.f.admin_checks.append(f"{when}: GET {path} -> {problem}")

    def provider_health(self) -> None:
        """After the hostile upstream: does each provider serve a plain request again?"""
        self.mock.reset()
        bodies = {"claude": ("/claude/v1/messages", {"max_tokens": 5, "messages": MESSAGES})}
        with httpx.Client(base_url=self.gw.url, headers=self.gw.auth(), timeout=30) as c:
            for p in PROVIDERS:
                path, doc = bodies.get(p, (f"/{p}/v1/chat/completions", {"messages": MESSAGES}))
                r = c.post(path, json={"model": "m", **doc})
                wait = r.headers.get("retry-after", "")
                if r.status_code == 429 and wait.isdigit() and int(wait) <= 600:
                    self.f.admin_notes.append(f"after the run {p} is cooling for {wait} s")
                elif r.status_code != 200:
                    self.f.warnings.append(
                        f"after the hostile run, POST {path} (master password) -> {r.status_code} "
                        f"retry-after={r.headers.get('retry-after')} {r.text[:200]}"
                    )

    def admin_phase(self, until: float) -> None:
        try:
            import hypothesis
            import schemathesis
            from hypothesis import HealthCheck, Phase
            from schemathesis import GenerationMode
        except ImportError as exc:
            self.f.admin_checks.append(f"schemathesis missing ({exc}): pip install -e '.[bench]'")
            return
        doc = self.gw.api("GET", "/api/openapi.json").json()
        schema = schemathesis.openapi.from_dict(doc)
        ops: list[Any] = []
        for result in schema.get_all_operations():
            try:
                ops.append(result.ok())  # type: ignore[union-attr]
            except Exception as exc:  # an operation schemathesis cannot read
                self.f.admin_notes.append(f"operation skipped: {exc!r}"[:200])
        base = self.gw.url
        headers = self.gw.admin()
        ids = self._admin_ids()

        def call(case: Any, how: str) -> None:
            if time.monotonic() >= until:
                return
            self._guard(case)
            self.f.admin_sent[how] += 1
            try:
                resp = case.call(base_url=base, headers=headers, timeout=30)
            except Exception as exc:  # a transport error: the gateway dropped the connection
                self.f.admin_5xx.append(f"{how} {case.method} {case.formatted_path}: {exc!r}")
                return
            self.f.admin_statuses[resp.status_code] += 1
            if resp.status_code >= 500:
                curl = case.as_curl_command(headers={"Authorization": "Bearer <ADMIN_PASSWORD>"})
                self.f.admin_5xx.append(
                    f"{how}: {curl}\n      -> {resp.status_code} {resp.content[:300]!r}"
                )

        # coverage cases (boundaries, each field's edge values), when this version offers them
        for op in ops:
            if time.monotonic() >= until:
                break
            try:
                cases = schema.iter_coverage_cases(
                    op,
                    generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                    generation_config=schema.config.generation_for(operation=op),
                )
                for i, case in enumerate(cases):
                    if i >= self.args.coverage_cases:
                        break
                    call(case, "coverage")
            except Exception as exc:
                self.f.admin_notes.append(f"coverage cases of {op.label}: {exc!r}"[:200])
        # then fuzzing rounds, positive and negative, some with real ids and names in the path
        settings = hypothesis.settings(
            max_examples=self.args.examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=False,
        )

        def fuzz_one(strategy: Any, how: str) -> None:
            @settings
            @hypothesis.given(case=strategy)
            def run(case: Any) -> None:
                call(case, how)

            run()

        rounds = 0
        while time.monotonic() < until:
            rounds += 1
            for op in ops:
                if time.monotonic() >= until:
                    break
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    params = self._path_params(op, ids)
                    try:
                        strategy = op.as_strategy(mode, path_parameters=params or None)
                        fuzz_one(strategy, mode.value)
                    except Exception as exc:  # generation trouble is not the gateway's
                        self.f.admin_notes.append(f"fuzzing {op.label} {mode.value}: {exc!r}"[:200])
        self.f.admin_notes.append(f"{rounds} fuzzing round(s) over {len(ops)} operations")
        # nothing may have pointed a provider anywhere but loopback
        for p in self.gw.api("GET", "/api/providers").json().get("providers", []):
            url = str(p.get("base_url", ""))
            if url and not re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])[:/]", url):
                self.f.warnings.append(f"provider {p.get('name')} base_url is now {url!r}")

    def _admin_ids(self) -> dict[str, list[Any]]:
        keys = [k["id"] for k in self.gw.api("GET", "/api/keys").json().get("keys", [])]
        clients = [c["id"] for c in self.gw.api("GET", "/api/clients").json().get("clients", [])]
        return {"key": keys, "client": clients}

    def _path_params(self, op: Any, ids: dict[str, list[Any]]) -> dict[str, Any]:
        """Real names and ids half of the time (else schemathesis's own, mostly 404s)."""
        if self.rng.random() < 0.5:
            return {}
        path = op.path
        out: dict[str, Any] = {}
        if "{name}" in path:
            pool = ["fast", "gpt-4o", "new-alias"] if "/models/" in path else list(PROVIDERS)
            out["name"] = self.rng.choice(pool)
        if "{id}" in path:
            pool = ids["client"] if "/clients/" in path else ids["key"]
            if pool:
                out["id"] = self.rng.choice(pool)
        return out

    def _guard(self, case: Any) -> None:
        """No admin case may point the gateway at anything but loopback: URL-like values in
        a body become the mock's address; a body that is not an object and names a scheme
        is replaced."""
        safe = self.mock.url

        def fix(value: Any, key: str = "") -> Any:
            if isinstance(value, dict):
                return {k: fix(v, str(k)) for k, v in value.items()}
            if isinstance(value, list):
                return [fix(v, key) for v in value]
            if isinstance(value, str):
                lowered = key.lower()
                if "url" in lowered or "proxy" in lowered or "webhook" in lowered:
                    return safe
                if "://" in value or value.lower().startswith(("www.", "//")):
                    return safe
            return value

        body = getattr(case, "body", None)
        if isinstance(body, dict | list):
            case.body = fix(body)
        elif isinstance(body, str | bytes) and (
            b"://" in (body.encode("utf-8", "replace") if isinstance(body, str) else body)
            or b"url" in (body.encode("utf-8", "replace") if isinstance(body, str) else body)
        ):
            case.body = {}
        query = getattr(case, "query", None)
        if isinstance(query, dict):
            case.query = fix(query)

    # -- log

    def scan_log(self) -> None:
        """Every traceback in the log: its last frame and its exception line."""
        lines = self.gw.log().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("Traceback"):
                continue
            block = [line]
            for nxt in lines[i + 1 : i + 200]:
                block.append(nxt)
                if nxt and not nxt.startswith((" ", "\t")):
                    break  # the exception line ends the block
            tail = "\n".join(block[-5:])
            self.f.tracebacks.append(re.sub(r"0x[0-9a-f]+", "0x...", tail))


def summary(run: Run, started: float) -> int:
    f = run.f
    out = print
    out("\n==== keygate fuzz summary ====")
    out(f"seed {run.args.seed}, {time.monotonic() - started:.0f} s")
    out(f"proxy requests sent: {sum(v for k, v in f.sent.items() if ':' not in k)}")
    for kind, n in sorted(f.sent.items()):
        spent = f" ({f.seconds[kind]:.1f} s)" if kind in f.seconds else ""
        out(f"  {kind:32} {n}{spent}")
    out(f"  with a hostile upstream script pushed: {f.hostile}")
    out(f"statuses seen: {dict(sorted(f.statuses.items()))}")
    if f.conn_errors:
        out(f"no HTTP answer: {dict(f.conn_errors)}")
    out(f"upstream requests received: {f.received} (+{f.background} of keygate's own)")
    out(f"5xx from the upstream (relayed, or 502/503/504 after a cut try): {f.upstream_5xx}")
    out(f"gateway-made 5xx: {len(f.gateway_5xx)}")
    for line in f.gateway_5xx[:20]:
        out(f"  - {line}")
    out(f"requests served outside a client's lists: {len(f.outside)}")
    for line in f.outside[:30]:
        out(f"  - {line}")
    if f.leaks:
        out(f"client credentials that reached the upstream: {len(f.leaks)}")
        for line in f.leaks[:10]:
            out(f"  - {line}")
    if f.unmarked:
        out(
            f"  of which without the fuzzer's mark (checked as the request just sent): {f.unmarked}"
        )
    out(f"admin API cases sent: {sum(f.admin_sent.values())} {dict(f.admin_sent)}")
    out(f"  statuses {dict(sorted(f.admin_statuses.items()))}")
    out(f"admin API 5xx: {len(f.admin_5xx)}")
    for line in f.admin_5xx[:20]:
        out(f"  - {line}")
    out(f"admin health checks failed: {len(f.admin_checks)}")
    for line in f.admin_checks:
        out(f"  - {line}")
    for note in f.admin_notes[:15]:
        out(f"  note: {note}")
    out(f"tracebacks in the gateway log: {len(f.tracebacks)}")
    for tb, n in Counter(f.tracebacks).most_common(5):
        out(f"  ({n}x) " + tb.replace("\n", "\n        "))
    for cause in f.traceback_causes[:8]:
        out(f"  - {cause}")
    for w in f.warnings:
        out(f"warning: {w}")
    failed = bool(
        f.gateway_5xx or f.outside or f.leaks or f.admin_5xx or f.admin_checks or f.tracebacks
    )
    out("RESULT: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120, help="whole run's time budget")
    ap.add_argument("--max-requests", type=int, default=100_000, help="proxy requests at most")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    ap.add_argument("--hostile", type=float, default=0.3, help="share with a hostile upstream")
    ap.add_argument(
        "--admin-share", type=float, default=0.35, help="share of time for the admin API"
    )
    ap.add_argument("--examples", type=int, default=20, help="admin cases per operation and round")
    ap.add_argument("--coverage-cases", type=int, default=80, help="coverage cases per operation")
    ap.add_argument("--skip-admin", action="store_true", help="no schemathesis run")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (gateway log, config)")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.seconds
    tmp = tempfile.mkdtemp(prefix="keygate-fuzz-")
    work = Path(tmp)
    print(f"keygate fuzz: seed {args.seed}, {args.seconds:g} s, work dir {work}", flush=True)
    try:
        run = Run(args, work)
    except Exception as exc:
        print(f"could not start the mock and the gateway: {exc}", file=sys.stderr)
        return 2
    try:
        share = 0.0 if args.skip_admin else args.admin_share
        proxy_until = started + (args.seconds - 10) * (1 - share)
        print(f"proxy phase until +{proxy_until - started:.0f} s", flush=True)
        run.proxy_phase(proxy_until, args.max_requests)
        run.admin_health("after the proxy phase")
        run.provider_health()
        if not args.skip_admin:
            print(f"admin phase until +{deadline - 5 - started:.0f} s", flush=True)
            run.admin_phase(deadline - 5)
            run.admin_health("after the admin phase")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        run.close()
        run.scan_log()
    code = summary(run, started)
    if args.keep or code:
        print(f"gateway log: {run.gw.log_path}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
