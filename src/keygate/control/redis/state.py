"""The Redis form's supervisor: the connection, its health, and the shared forms' background work.

Why Redis: limits that live in one process multiply with the number of processes. Here every
decision is one Lua script run atomically in Redis (one round trip, Redis `TIME` as the one
clock); slots are leases with an expiry, renewed while held, so a crashed instance's slots come
back by themselves. Secrets and counters stay in process: only key ids and health go to Redis.

When Redis does not answer (within `timeout_s`) every call is served by the local form each
shared form holds, whose limits are the fleet's divided by `fleet_size`; the outage is logged
once and shown in /healthz, and a probe brings the shared forms back when Redis answers.

Under Sentinel every (re)connect asks the sentinels for the master first, and while connected
they are asked once a second whether it moved (a demoted master still answers PING; writes to
it answer READONLY, which fails the connection too): a failover is an outage of a second or
two, served locally, after which the leases are reconciled on the new master as after any
outage.

Keys (all under the `{provider}` hash tag):
  keygate:{p}:adm      hash  tokens, stamp (the bucket); pause (the pool-wide 429 guard)
  keygate:{p}:leases   zset  slot lease id -> expiry
  keygate:{p}:st       hash  key id -> a | c:<until> | i:<until> | x:<until> | d
  keygate:{p}:ring     list  round-robin ring of active key ids (lazy deletion)
  keygate:{p}:inring   set   ids in the ring, so each is there once
  keygate:{p}:cool     zset  cooling key id -> until
  keygate:{p}:hold     zset  invalid/exhausted key id -> until
  keygate:{p}:lim      hash  key id -> "rpm:max_conn:rph:rpd:tpm:tph:tpd" (own limits only)
  keygate:{p}:qon      hash  key id -> 1: quota windows apply (own limits or announced)
  keygate:{p}:strikes  hash  key id -> consecutive 429s (cooldown backoff)
  keygate:{p}:g429     zset  key id -> time of its latest 429 (the guard's window)
  keygate:{p}:guard    hash  ok -> time of the latest success
  keygate:{p}:c:<id>   zset  per-key connection leases -> expiry (key max_conn)
  keygate:{p}:q:<id>   hash  the key's quota day counters and announced budgets (quota.lua)
  keygate:{p}:qm:<id> qh:<id> tm:<id> th:<id>  zsets: its minute and hour windows
  keygate:client:{<id>}:d:<day> m:<month> rpm  a client key's limit windows (clients/fleet.py)
Channels: `keygate:events` (JSON: health, guard, 429, keys, provider), `keygate:release`
(a provider name: a slot was freed while its gate was full).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson

from keygate.control.redis.connection import (
    Callback,
    RedisDown,
    RedisTarget,
    ReplyError,
    RespPipe,
)
from keygate.control.redis.members import SharedGate, SharedPool
from keygate.control.redis.scripts import CLEAN, RELEASE_SLOT, RENEW, SCRIPTS, Script
from keygate.control.redis.sentinel import SentinelFollow
from keygate.observe.logs import log

PROBE_S = 1.0  # how often an unreachable Redis is tried again
SYNC_BATCH = 500
EVENTS = "keygate:events"
RELEASES = "keygate:release"


class SharedState(SentinelFollow):
    """The Redis connection, its health, and the background work of the shared forms."""

    def __init__(
        self, url: str, fleet_size: int = 1, clock: Callable[[], float] | None = None
    ) -> None:
        self.clock = clock  # tests: a fake wall clock, passed to the scripts as "now"
        self.target = target = RedisTarget.parse(url)
        self.lease_s, self.timeout_s = target.lease_s, target.timeout_s
        self.display_url = target.display_url
        self.fleet_size = max(1, fleet_size)
        self.instance = secrets.token_hex(6)
        self.up = False
        self.reason = "not connected yet"
        self.since = time.time()
        self.admissions: dict[str, SharedGate] = {}  # filled by the objects themselves
        self.pools: dict[str, SharedPool] = {}
        self._seq = itertools.count(1)
        self._pipe: RespPipe | None = None
        self._pubsub: Any = None
        self._ps_client: Any = None
        self._ps_address = ""
        self._sentinels: Any = None  # redis-py's Sentinel, under Sentinel only
        self.master = ""  # "host:port" the sentinels named, once connected
        self._moved = False  # the sentinels named a new master: reconnect without waiting
        self._tasks: list[asyncio.Task[None]] = []
        self._on_change: Callable[[], Awaitable[None]] | None = None
        self._change_task: asyncio.Task[None] | None = None
        self._change_again = False
        self._down_logged = False
        self._connected_once = False

    def now(self) -> str:
        """ARGV[1] of every script: empty means Redis TIME."""
        return "" if self.clock is None else repr(self.clock())

    def lease_id(self) -> str:
        return f"{self.instance}:{next(self._seq)}"

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self, on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        """Connect (never fatal: an unreachable Redis means local limits until it answers)."""
        self._on_change = on_change
        if self.target.sentinel is not None:
            self._sentinels = self.target.sentinel.client()
        else:
            self._ps_client = self.target.client()
        try:
            await self._connect()
        except Exception as exc:
            self._went_down(_describe(exc))
        loop = asyncio.get_running_loop()
        for coro in (self._supervise(), self._renew_loop(), self._watchdog()):
            self._tasks.append(loop.create_task(coro))
        if self._sentinels is not None:
            self._tasks.append(loop.create_task(self._follow()))

    async def close(self) -> None:
        if self._change_task is not None:
            self._tasks.append(self._change_task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._pipe is not None and self.up:
            for adm in self.admissions.values():  # hand our slots back rather than wait for expiry
                for lease in list(adm.held):
                    with contextlib.suppress(RedisDown):
                        self._pipe.send(
                            _evalsha(
                                RELEASE_SLOT, [adm.leases_key], ["", lease, 0, RELEASES, adm.name]
                            )
                        )
        self.up = False
        if self._pipe is not None:
            self._pipe.close("keygate stopping")
            self._pipe = None
        if self._ps_client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self._ps_client.aclose()
        if self._sentinels is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self._sentinels.aclose()

    async def _connect(self) -> None:
        pipe = RespPipe(self._lost)
        ps = None
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                target = await self._locate()
                await pipe.open(target)
                if target.sentinel is not None:
                    role = await pipe.call(["ROLE"])
                    if role[0] != b"master":  # the sentinels' view lags a switch
                        raise RuntimeError(f"{self._ps_address} is a {role[0].decode()} now")
                for script in SCRIPTS:
                    sha = await pipe.call(["SCRIPT", "LOAD", script.src])
                    if sha.decode() != script.sha:
                        raise RuntimeError(f"script {script.name}: unexpected sha {sha!r}")
                ps = self._ps_client.pubsub(ignore_subscribe_messages=True)
                await ps.subscribe(EVENTS, RELEASES)
            self._pipe = pipe
            for pool in self.pools.values():
                await pool.resync()
            for adm in self.admissions.values():
                mine = [f"{self.instance}:", *adm.held]
                await self.run(CLEAN, [adm.leases_key], ["", *mine], force=True)
                adm.lease_local_slots()
            self.renew_now(force=True)
        except BaseException:
            if self._pipe is pipe:
                self._pipe = None
            pipe.close("connect failed")
            if ps is not None:
                with contextlib.suppress(Exception):
                    await ps.aclose()
            raise
        self._pubsub = ps
        if target.sentinel is not None:
            self.master = self._ps_address
        was_down = self._down_logged
        self.up = True
        self._down_logged = False
        self.reason = ""
        where = self.display_url + (f" (master {self.master})" if self.master else "")
        if was_down:
            log.warning(
                "shared state: Redis %s answers again after %.1fs; limits and key health are "
                "shared by the fleet again",
                where,
                time.time() - self.since,
            )
        else:
            log.info("shared state: Redis %s (slot leases %gs)", where, self.lease_s)
        for adm in self.admissions.values():
            adm.wake()
        if self._connected_once:
            self._changed()  # catch up on admin changes announced while we were away
        self._connected_once = True

    def _lost(self, pipe: RespPipe, reason: str) -> None:
        if pipe is self._pipe:
            self.fail(reason)

    def fail(self, reason: str) -> None:
        """Redis did not answer: every form serves locally from now on, until the probe succeeds."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close(reason)
        if not self.up:
            return
        self.up = False
        self._went_down(reason)
        for adm in self.admissions.values():
            adm.wake()

    def _went_down(self, reason: str) -> None:
        self.reason = reason
        if self._down_logged:
            return
        self._down_logged = True
        self.since = time.time()
        log.error(
            "SHARED STATE DOWN: Redis %s is unreachable (%s). Serving with LOCAL limits "
            "(1/%d of each provider limit per instance) and local key health until it answers; "
            "retrying every %gs",
            self.display_url,
            reason,
            self.fleet_size,
            PROBE_S,
        )

    async def _supervise(self) -> None:
        """Probe while down; listen to pub/sub while up."""
        while True:
            if not self.up:
                if not self._moved:
                    await asyncio.sleep(PROBE_S)
                self._moved = False
                try:
                    await self._connect()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._went_down(_describe(exc))
                    continue
            await self._listen()
            if self.up:
                self.fail("pub/sub listener stopped")

    async def _listen(self) -> None:
        ps = self._pubsub
        try:
            while self.up and ps is not None:
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    try:
                        self._dispatch(msg["channel"], msg["data"])
                    except Exception as exc:
                        log.warning("shared state: bad event %r: %s", msg.get("data"), exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(f"pub/sub: {_describe(exc)}")
        finally:
            self._pubsub = None
            if ps is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout_s):
                        await ps.aclose()

    async def _watchdog(self) -> None:
        """One timer for every call: Redis that stops answering is declared down within
        `timeout_s`, which fails the calls waiting on it (they are then served locally). An idle
        connection is pinged every second, so /healthz tells the truth without traffic too."""
        loop = asyncio.get_running_loop()
        last_ping = loop.time()
        while True:
            await asyncio.sleep(min(0.1, self.timeout_s / 4))
            pipe = self._pipe
            if pipe is None:
                continue
            if pipe.oldest_age() > self.timeout_s:  # also bounds the resync of a reconnect
                self.fail(f"no answer within {self.timeout_s:g}s")
            elif self.up and loop.time() - last_ping >= PROBE_S:
                last_ping = loop.time()
                with contextlib.suppress(RedisDown):
                    pipe.send(["PING"])

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if self.up:
                self.renew_now()

    def renew_now(self, force: bool = False) -> None:
        """Push back the expiry of every lease this instance holds (plain ZADD: a lease lost to a
        Redis restart comes back too)."""
        for adm in self.admissions.values():
            leases = list(adm.held)
            for chunk in chunks(leases, SYNC_BATCH):
                self.fire(
                    RENEW, [adm.leases_key] * len(chunk), ["", self.lease_s, *chunk], force=force
                )
        for pool in self.pools.values():
            pairs = [(pool.conn_key(kid), lease) for kid, ls in pool.leases.items() for lease in ls]
            for chunk in chunks(pairs, SYNC_BATCH):
                self.fire(
                    RENEW,
                    [k for k, _ in chunk],
                    ["", self.lease_s, *(lease for _, lease in chunk)],
                    force=force,
                )

    # --- calls ----------------------------------------------------------------------------------
    async def run(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        orphan: Callback | None = None,
        force: bool = False,
    ) -> Any:
        """One script, one round trip; raises RedisDown (after switching to local) on failure."""
        pipe = self._pipe
        if pipe is None or not (self.up or force):
            raise RedisDown(self.reason or "not connected")
        fut = pipe.call(_evalsha(script, keys, args), orphan)
        try:
            return await fut
        except ReplyError as exc:
            self.fail(f"Redis error in {script.name}: {exc}")
            raise RedisDown(str(exc)) from None
        except RedisDown as exc:
            self.fail(str(exc))
            raise

    def fire(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        cb: Callback | None = None,
        force: bool = False,
    ) -> None:
        """Written now, answer not awaited: releases and writes made from sync code. Order with
        later calls is kept by the one connection."""
        pipe = self._pipe
        if pipe is None or not (self.up or force):
            return
        pipe.send(
            _evalsha(script, keys, args), self._fired if cb is None else _checked(self, script, cb)
        )

    def _fired(self, value: Any) -> None:
        if isinstance(value, ReplyError):
            asyncio.get_running_loop().call_soon(self.fail, f"Redis error: {value}")

    def announce(self, kind: str) -> None:
        """Tell every instance that keys, clients, provider settings or models changed in the store."""
        pipe = self._pipe
        if pipe is not None and self.up:
            pipe.send(
                ["PUBLISH", EVENTS, orjson.dumps({"t": kind, "src": self.instance})], self._fired
            )

    def command(self, args: Sequence[Any]) -> asyncio.Future[Any] | None:
        """A plain command on the pipelined connection, written with whatever else this
        loop iteration sends and answered in order; None when Redis is down (the caller
        serves itself locally). Its failure is the caller's to judge, not the connection's."""
        pipe = self._pipe
        if pipe is None or not self.up:
            return None
        try:
            return pipe.call(args)
        except RedisDown:
            return None

    def send(self, args: Sequence[Any]) -> None:
        """A plain command whose answer nobody waits for (nothing when Redis is down)."""
        pipe = self._pipe
        if pipe is not None and self.up:
            with contextlib.suppress(RedisDown):
                pipe.send(args)

    # --- events ---------------------------------------------------------------------------------
    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == b"keygate:release":
            adm = self.admissions.get(data.decode())
            if adm is not None:
                adm.wake()
            return
        msg = orjson.loads(data)
        kind = msg.get("t")
        if kind in ("keys", "provider", "models", "clients"):
            if msg.get("src") != self.instance:
                self._changed()
            return
        name = msg.get("p", "")
        pool = self.pools.get(name)
        if pool is None:
            return
        if kind == "health":
            pool.on_health(msg)
        elif kind == "guard":
            pool.on_guard(msg)
            adm = self.admissions.get(name)
            if adm is not None:
                adm.on_pause(float(msg["pause"]))
        elif kind == "429":
            pool.note_429()

    def _changed(self) -> None:
        """Run the store change poll now (once more if one is already running)."""
        if self._on_change is None:
            return
        if self._change_task is not None and not self._change_task.done():
            self._change_again = True
            return

        async def run() -> None:
            assert self._on_change is not None
            self._change_again = True
            while self._change_again:
                self._change_again = False
                try:
                    await self._on_change()
                except Exception as exc:
                    log.warning("shared state: change poll failed: %s", exc)

        self._change_task = asyncio.get_running_loop().create_task(run())

    # --- reporting ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        where: dict[str, Any] = {"redis": self.display_url}
        if self.target.sentinel is not None:
            where["redis_master"] = self.master  # the latest one the sentinels named
        if self.up:
            return {"state": "redis", **where}
        return {
            "state": "local-fallback",
            "state_reason": f"Redis unreachable: {self.reason}",
            "state_since": round(self.since, 3),
            **where,
            "fleet_size": self.fleet_size,
        }

    def banner(self) -> str:
        if self.up:
            master = f"; master {self.master}" if self.master else ""
            return (
                f"redis {self.display_url} (limits and key health shared; slot leases "
                f"{self.lease_s:g}s{master})"
            )
        return (
            f"redis {self.display_url} UNREACHABLE ({self.reason}): local limits, "
            f"1/{self.fleet_size} of each, until it answers"
        )


def _evalsha(script: Script, keys: list[str], args: list[Any]) -> list[Any]:
    return ["EVALSHA", script.sha, len(keys), *keys, *args]


def _checked(state: SharedState, script: Script, cb: Callback) -> Callback:
    def done(value: Any) -> None:
        if isinstance(value, ReplyError):
            asyncio.get_running_loop().call_soon(
                state.fail, f"Redis error in {script.name}: {value}"
            )
        elif not isinstance(value, Exception):
            cb(value)

    return done


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, RedisDown) else f"{type(exc).__name__}: {text}"


def chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
