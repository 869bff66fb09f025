"""One provider's tries for one request: admit → pick key → one upstream exchange → classify →
retry, until an answer is relayed or no try is left.

Everything a try acquires is held by an `Attempt` (`async with`): the admission slot, then the
key it picked; both go back on every exit — an answer relayed, a refusal classified, a retry,
the client leaving, an error — the key with what the try came to, then the slot. A retry never
holds either while it waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keygate.control.base import Event, Rejected
from keygate.control.classify import Verdict, classify
from keygate.control.quota import quota_delay
from keygate.http.errors import GatewayError, retry_after_headers
from keygate.proxy import retry
from keygate.proxy.exchange import with_affinity
from keygate.proxy.firstevent import error_status, hold_first, opens_with_error
from keygate.proxy.forward import (
    UpstreamTimeout,
    UpstreamUnreachable,
    lower_headers,
    open_upstream,
    read_limited,
    request_headers,
)
from keygate.proxy.relay import relay
from keygate.runtime.egress import PROXY_ERRORS, proxy_failure

if TYPE_CHECKING:
    from collections.abc import Mapping

    from keygate.config.settings import ProviderConfig
    from keygate.control.base import Slot
    from keygate.control.keypool import KeyEntry
    from keygate.dialects.budget import Announced
    from keygate.proxy.exchange import Exchange
    from keygate.runtime.egress import ProxyState
    from keygate.runtime.gateway import Gateway
    from keygate.runtime.provider import ProviderRuntime

ERROR_BODY_LIMIT = 1 << 20
log = logging.getLogger("keygate.proxy")
_PROXY_FAILED: tuple[type[Exception], ...] = (UpstreamUnreachable, *PROXY_ERRORS)


@dataclass(slots=True)
class Failure:
    """Why one provider could not answer: what the pipeline answers with (`give_up`), unless
    the chain moves on. `last` is the last upstream refusal (status, raw headers, body,
    injected key), `last_error` keygate's own error; `wait` is how long until a key is usable
    (None: never by itself); `retryable`: another target may do better (not a 400, say)."""

    rt: ProviderRuntime
    last: tuple[int, Any, bytes, bytes] | None
    last_error: GatewayError | None
    wait: float | None
    retryable: bool
    quota: bool = False  # no key's quota can cover the request (`wait`: the earliest reset)

    def reason(self) -> str:
        """A few words for the route shown in recent requests and the access log."""
        if self.last is not None:
            status, _, body, _ = self.last
            if status < 400:  # a 200 stream whose first event was an error
                return f"{error_status(body)} in its first event"
            return str(status)
        if self.last_error is not None:
            return self.last_error.code or str(self.last_error.status)
        if self.wait is None:
            return "no usable key"
        return "quota spent" if self.quota else "keys cooling"


class _Held:
    """What `async with attempt` awaits on entry: done at once."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return iter(())  # type: ignore[return-value]  # an empty iterator: done, with None


_HELD = _Held()


class Attempt:
    """One try's hold on its provider: the admission slot (taken before) and the key it
    picks; on exit the key goes back with what the try came to (`settle`; a try cut short is
    `CANCELLED`), then the slot."""

    __slots__ = ("budget", "entry", "event", "message", "rt", "slot", "ticket", "until")

    def __init__(self, rt: ProviderRuntime, slot: Slot, ticket: Any) -> None:
        self.rt = rt
        self.slot = slot
        self.ticket = ticket
        self.entry: Any = None
        self.event = Event.CANCELLED
        self.until: float | None = None
        self.message = ""
        self.budget: list[Announced] | None = None

    def __aenter__(self) -> Awaitable[None]:
        return _HELD  # the slot was taken before: nothing to wait for (no coroutine per try)

    def settle(
        self,
        event: Event,
        until: float | None = None,
        message: str = "",
        budget: list[Announced] | None = None,
    ) -> None:
        """What the try came to, for the key's health and quota windows."""
        self.event, self.until, self.message, self.budget = event, until, message, budget

    async def release_key(self) -> None:
        """The key goes back now (before a retry is decided); once only."""
        entry, self.entry = self.entry, None
        if entry is not None:
            pause = await self.rt.pool.release(
                entry, self.event, self.until, self.message, self.ticket, self.budget
            )
            if pause:
                self.rt.admission.pause_until(pause)

    async def __aexit__(self, *exc: object) -> None:
        try:
            entry, self.entry = self.entry, None
            if entry is not None:  # `release_key`, written out: this runs on every request
                rt = self.rt
                pause = await rt.pool.release(
                    entry, self.event, self.until, self.message, self.ticket, self.budget
                )
                if pause:
                    rt.admission.pause_until(pause)
        finally:
            await self.slot.release()


class Pinning:
    """One request's affinity (SPEC §15) on one provider: the pin read once, the key each
    pick took, the pin moved to it when it is another (so a retry's key keeps it), and what
    the answer says (`x-keygate-affinity`)."""

    __slots__ = ("asked", "conv", "pin", "placed", "result")

    def __init__(self, gw: Gateway, cfg: ProviderConfig, conv: str) -> None:
        self.conv = conv
        asked = gw.pins.ask(cfg.name, conv, cfg.affinity_ttl_s)
        # in memory the answer is here already; from Redis it is a reply still to come
        self.asked: Any = None if asked is None or isinstance(asked, int) else asked
        self.pin: int | None = None if self.asked is not None else asked  # what `hit` is
        self.placed = self.pin  # what the pin is now
        self.result = ""

    async def read(self, gw: Gateway, cfg: ProviderConfig) -> int | None:
        """The pin Redis answered (which failing, this process's)."""
        asked, self.asked = self.asked, None
        self.pin = self.placed = await gw.pins.answer(
            asked, cfg.name, self.conv, cfg.affinity_ttl_s
        )
        return self.pin

    def took(self, gw: Gateway, cfg: ProviderConfig, ex: Exchange, key_id: int) -> None:
        pin = self.pin
        self.result = "new" if pin is None else "hit" if key_id == pin else "moved"
        if key_id != self.placed:
            gw.pins.put(cfg.name, self.conv, key_id, cfg.affinity_ttl_s)
            self.placed = key_id
        ex.served = with_affinity(ex.served, self.result)


def busy(rt: ProviderRuntime, rej: Rejected) -> Failure:
    """A provider that cannot admit the request now (a full queue, a queue timeout): its 429,
    as a failure another target may do better than."""
    error = GatewayError(
        429,
        f"provider '{rt.cfg.name}' is busy ({rej.reason}); retry later",
        "rate_limited",
        retry_after_headers(rej.retry_after_s),
    )
    return Failure(rt, None, error, 0.0, True)


class Outgoing:
    """What goes to one provider: the client's method and headers (the key is injected per
    try), the URL and body made for that provider."""

    __slots__ = ("body", "headers", "method", "url")

    def __init__(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body


async def forward(
    gw: Gateway,
    rt: ProviderRuntime,
    ex: Exchange,
    send: Any,
    out: Outgoing,
    budget: int | None = None,
    more: bool = False,
) -> Failure | None:
    """Tries one provider until an answer is relayed (None), or says why none could be: a
    `Failure` for the pipeline to answer or take to the next target. `budget`: the retries
    allowed here (default the provider's); `more`: another target follows, so a failure
    before the first byte is handed back rather than retried here."""
    cfg = rt.cfg
    budget = cfg.retries if budget is None else budget
    assert ex.wire is not None and gw.session is not None and ex.dog is not None
    retries: retry.Retries | None = None  # made at the first failure: most requests have none
    # the last upstream error answer (status, raw headers, body) and the key it was given
    last: tuple[int, Any, bytes, bytes] | None = None
    last_error: GatewayError | None = None  # or keygate's own 502/504
    delay: float | None = 0.0
    # affinity: the conversation's pin asked now, so that with Redis it goes out with the
    # admission's own call (None: this provider does not pin, or the request names nothing)
    pinning = Pinning(gw, cfg, ex.conv) if ex.conv is not None else None
    while True:
        if delay:
            await retry.sleep(delay)
        try:
            slot = await rt.admission.acquire(ex.client.id if ex.client is not None else None)
        except Rejected as rej:
            return busy(rt, rej)
        attempt = Attempt(rt, slot, ex.ticket)
        async with attempt:  # the slot, and the key once picked, go back on every path
            if getattr(slot, "queued", True):
                # It waited: if its client left meanwhile, find out before anything goes up.
                ex.watch()
                await asyncio.sleep(0)
            # pick key: one not tried yet, else one we tried, else how long until one is usable
            if pinning is None:
                pick = await rt.pool.acquire(retries.tried if retries else (), ex.ticket)
            else:  # the pinned key while it can serve now, else the normal pick
                tried = retries.tried if retries else ()
                pin = pinning.pin if pinning.asked is None else await pinning.read(gw, cfg)
                prefer = pin if pin is not None and pin not in tried else None
                pick = await rt.pool.acquire(tried, ex.ticket, prefer)
                if pick.entry is not None:
                    pinning.took(gw, cfg, ex, pick.entry.id)
            entry: KeyEntry | None = pick.entry
            if entry is None:
                # every key's quota is spent: wait for the earliest reset, unless another
                # target may serve now (a chain passes a spent provider over at once)
                delay = 0.0 if more else quota_delay(pick, ex.ticket, cfg.queue_timeout_s)
                if delay:
                    ex.watch()
                    continue
                return Failure(rt, last, last_error, pick.wait, True, pick.quota)
            attempt.entry = ex.entry = entry
            # one exchange; the watchdog is stopped by whoever reads the answer
            try:
                headers = request_headers(out.headers, ex.wire, entry.secret, out.body is not None)
                if rt.egress is None:
                    resp = await open_upstream(
                        gw.session,
                        out.method,
                        out.url,
                        headers,
                        out.body,
                        rt.timeout,
                        ex.dog,
                        cfg.timeout_first_byte_s,
                    )
                else:
                    resp = await _via_proxies(gw, rt, ex, out, headers, entry)
                first = b""
                # a stream's first event is held while it may still be retried or passed on
                if (
                    resp.status < 300
                    and resp.content_length is None
                    and (more or (retries.spent < retries.budget if retries else budget > 0))
                ):
                    first = await hold_first(resp, ex.dog, cfg.timeout_first_byte_s)
            except (UpstreamTimeout, UpstreamUnreachable) as exc:
                verdict, last_error = _unreachable(rt, ex, attempt, exc)
                last = None
            else:
                ex.upstream_status = resp.status
                if resp.status < 400 and not (first and opens_with_error(first)):
                    if pinning is not None:
                        rt.stats.affinity[pinning.result] += 1
                    await relay(rt, ex, send, resp, attempt, out.method == "HEAD", first)
                    return None
                verdict, last = await _refused(rt, ex, attempt, resp, first)
                last_error = None
            await attempt.release_key()
            # retry?
            if not verdict.retry:
                return Failure(rt, last, last_error, 0.0, False)
            if retries is None:
                retries = retry.Retries(cfg, budget)
            delay = await retries.after(verdict, entry.id, rt.pool)
            if delay is None:
                break
            ex.retries += 1
    return Failure(rt, last, last_error, pick.wait, True, pick.quota)


async def _via_proxies(
    gw: Gateway,
    rt: ProviderRuntime,
    ex: Exchange,
    out: Outgoing,
    headers: list[tuple[str, str]],
    entry: KeyEntry,
) -> Any:
    """SPEC §16: the exchange through the key's proxy. A proxy that fails (refused, its own
    407/502/503, a SOCKS error) is the proxy's fault: it is cooled and the next proxy by rank
    tried with the same key, which stays untouched; none left is keygate's own 502."""
    egress = rt.egress
    assert egress is not None and ex.dog is not None and gw.session is not None
    tried: list[ProxyState] = []
    while True:
        via = egress.pick(entry.id, entry.secret, tried)
        if via is None and tried:
            raise UpstreamUnreachable(f"every proxy failed (last: {tried[-1].shown})")
        try:
            return await open_upstream(
                gw.session if via is None else egress.session(via),  # None: this key is direct
                out.method,
                out.url,
                headers,
                out.body,
                rt.timeout,
                ex.dog,
                rt.cfg.timeout_first_byte_s,
            )
        except _PROXY_FAILED as exc:
            failed = proxy_failure(exc)
            if failed is None or via is None:
                raise
            egress.failed(via)
            log.warning(
                "proxy %s of %s failed: %s (cooling it)",
                via.shown,
                rt.cfg.name,
                type(failed).__name__,
            )
            tried.append(via)


def _unreachable(
    rt: ProviderRuntime, ex: Exchange, attempt: Attempt, exc: Exception
) -> tuple[Verdict, GatewayError]:
    """No answer at all (timeout, refused connection): the provider's fault, keygate's own
    502/504 to answer with; `attempt` settled with it."""
    timed_out = isinstance(exc, UpstreamTimeout)
    error = GatewayError(
        504 if timed_out else 502,
        f"upstream {rt.cfg.name}: {exc}",
        "upstream_timeout" if timed_out else "upstream_unreachable",
    )
    ex.upstream_status = 0
    attempt.entry.err_5xx += 1
    verdict = Verdict(Event.PROVIDER_ERROR, None, True, False, str(exc))
    attempt.settle(verdict.event, verdict.until, verdict.message)
    return verdict, error


async def _refused(
    rt: ProviderRuntime, ex: Exchange, attempt: Attempt, resp: Any, first: bytes
) -> tuple[Verdict, tuple[int, Any, bytes, bytes]]:
    """An upstream refusal (or the error a 200 stream opened with), read and classified: the
    verdict, and the refusal as it may be relayed; `attempt` settled with it."""
    cfg, wire, entry = rt.cfg, ex.wire, attempt.entry
    assert wire is not None and ex.dog is not None
    ex.dog.stop()
    status = resp.status
    try:
        if first:
            err_body, status = first, error_status(first)
        else:
            err_body = await read_limited(resp, ERROR_BODY_LIMIT, cfg.timeout_idle_s)
    finally:
        resp.close()
    headers: Mapping[str, str] = resp.headers
    verdict = classify(
        status, lower_headers(resp), err_body, None, wire.reset_hint, cfg.error_rules
    )
    if status < 500:
        entry.err_4xx += 1
    else:
        entry.err_5xx += 1
    attempt.settle(verdict.event, verdict.until, verdict.message, wire.read_budget(headers))
    return verdict, (resp.status, resp.raw_headers, err_body, entry.secret.encode())
