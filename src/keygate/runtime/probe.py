"""A cheap authenticated request (the model list) that tells whether a key works, and the one
operation that tests a key and records what the test proved (admin API and CLI alike)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from keygate.config.settings import ProviderConfig
from keygate.control.base import Event
from keygate.control.classify import classify
from keygate.dialects import dialect_for
from keygate.runtime.egress import PROXY_ERRORS, proxy_failure
from keygate.store.base import Store, StoreError

_BODY_LIMIT = 4096  # enough for classify() to find "API key not valid" or a quota message


@dataclass(slots=True)
class ProbeAnswer:
    status: int  # 0 when the upstream could not be reached
    latency_ms: float
    error: str  # short, never contains the key
    headers: dict[str, str]  # lower-case names
    body: bytes  # the first few KB


@dataclass(slots=True)
class KeyTest:
    """A test's outcome; `health` is (status, until, last_error) when the test changed it."""

    id: int
    ok: bool
    status: int
    latency_ms: float
    error: str
    health: tuple[str, float, str] | None
    save_error: str = ""  # why the new health could not be stored


async def probe_answer(
    session: aiohttp.ClientSession, cfg: ProviderConfig, secret: str
) -> ProbeAnswer:
    url, headers = dialect_for(cfg.key_style).models_request(cfg.base_url, secret)
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_connect_s)
    try:
        async with asyncio.timeout(min(cfg.timeout_first_byte_s, 30.0)):
            async with session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                body = await resp.content.read(_BODY_LIMIT)
                status = resp.status
                got = {k.lower(): v for k, v in resp.headers.items()}
    except TimeoutError:
        return ProbeAnswer(0, (time.perf_counter() - started) * 1000, "timed out", {}, b"")
    except (aiohttp.ClientError, OSError, *PROXY_ERRORS) as exc:
        ms = (time.perf_counter() - started) * 1000
        failed = proxy_failure(exc)
        if failed is not None:  # the key's proxy, not the key: proves nothing about the key
            return ProbeAnswer(0, ms, f"proxy failed: {type(failed).__name__}", {}, b"")
        return ProbeAnswer(0, ms, f"unreachable: {type(exc).__name__}", {}, b"")
    ms = (time.perf_counter() - started) * 1000
    return ProbeAnswer(status, ms, "" if status < 400 else f"{status} from upstream", got, body)


async def probe(
    session: aiohttp.ClientSession, cfg: ProviderConfig, secret: str
) -> tuple[int, float, str]:
    """(status, latency ms, error text); status 0 when the upstream could not be reached."""
    answer = await probe_answer(session, cfg, secret)
    return answer.status, answer.latency_ms, answer.error


def health_after_test(
    current: str, answer: ProbeAnswer, cfg: ProviderConfig, now: float
) -> tuple[str, float, str] | None:
    """What a test proves about a key, judged like live traffic (classify, the provider's
    error rules first): a pass makes it active, a refusal invalid, a quota error exhausted, a
    429 cooling, a rule may disable it. Provider faults and unreachable upstreams prove
    nothing about the key; a disabled key stays disabled (only a person brings it back)."""
    if current in ("disabled", "deleted"):
        return None
    if 200 <= answer.status < 300:
        return None if current == "active" else ("active", now, "")
    if answer.status == 0:
        return None
    hint = dialect_for(cfg.key_style).reset_hint
    verdict = classify(answer.status, answer.headers, answer.body, now, hint, cfg.error_rules)
    if verdict.event is Event.INVALID:
        return "invalid", now + cfg.recheck_interval_s, verdict.message
    if verdict.event is Event.EXHAUSTED:
        return "exhausted", verdict.until or now + cfg.exhausted_cooldown_s, verdict.message
    if verdict.event is Event.RATE_LIMITED or verdict.event is Event.COOLING:
        return "cooling", verdict.until or now + cfg.cooldown_s, verdict.message
    if verdict.event is Event.DISABLED:
        return "disabled", 0.0, verdict.message
    return None


def proven_at(status: str, until: float) -> float:
    """When a test proved a stored key works (or an admin set it active); 0 when its health
    says nothing of either. Such a revive is saved as `active` with `until` its moment (any
    other `active` has 0): so the change feed carries it as a decision every running
    instance follows, where a recovery read back from the store may be stale
    (`runtime.sync`)."""
    return until if status == "active" else 0.0


async def run_key_test(
    session: aiohttp.ClientSession,
    store: Store,
    cfg: ProviderConfig,
    key_id: int,
    secret: str,
    current_status: str,
) -> KeyTest:
    """Probe the key and write the health the answer proves to the store, where a running
    gateway (or every instance sharing the store) picks it up."""
    answer = await probe_answer(session, cfg, secret)
    health = health_after_test(current_status, answer, cfg, time.time())
    save_error = ""
    if health is not None:
        try:
            await store.update_key(key_id, status=health[0], until=health[1], last_error=health[2])
        except StoreError as exc:
            save_error = str(exc)
    ok = 200 <= answer.status < 300
    return KeyTest(key_id, ok, answer.status, answer.latency_ms, answer.error, health, save_error)
