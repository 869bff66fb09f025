"""Shared state on Redis (`KEYGATE_REDIS_URL`): one set of limits and key health for a fleet.

Why: limits that live in one process multiply with the number of processes. Here every decision
is one Lua script run atomically in Redis (one round trip, Redis `TIME` as the one clock); slots
are leases with an expiry, renewed while held, so a crashed instance's slots come back by
themselves. Secrets and counters stay in process: only key ids and health go to Redis.

The shared forms subclass the local ones. When Redis does not answer (within `timeout_s`) a call
is served by the local form, whose limits are the fleet's divided by `fleet_size`; the outage is
logged once and shown in /healthz, and a probe brings the shared forms back when Redis answers.

Hot-path commands go over one pipelined connection (`RespPipe`): a command is written the moment
it is issued and answers come back in order, so concurrent decisions share one socket and a
release is always applied before any later admission of this instance. Pub/sub uses redis-py.

Keys (all under the `{provider}` hash tag):
  keygate:{p}:adm      hash  tokens, stamp (the bucket); pause (the pool-wide 429 guard)
  keygate:{p}:leases   zset  slot lease id -> expiry
  keygate:{p}:st       hash  key id -> a | c:<until> | i:<until> | x:<until> | d
  keygate:{p}:ring     list  round-robin ring of active key ids (lazy deletion)
  keygate:{p}:inring   set   ids in the ring, so each is there once
  keygate:{p}:cool     zset  cooling key id -> until
  keygate:{p}:hold     zset  invalid/exhausted key id -> until
  keygate:{p}:lim      hash  key id -> "rpm:max_conn" (keys with their own limits only)
  keygate:{p}:strikes  hash  key id -> consecutive 429s (cooldown backoff)
  keygate:{p}:g429     zset  key id -> time of its latest 429 (the guard's window)
  keygate:{p}:guard    hash  ok -> time of the latest success
  keygate:{p}:c:<id>   zset  per-key connection leases -> expiry (key max_conn)
  keygate:{p}:r:<id>   list  per-key pick times, newest first (key rpm)
Channels: `keygate:events` (JSON: health, guard, 429, keys, provider), `keygate:release`
(a provider name: a slot was freed while its gate was full).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import orjson

from keygate.control.admission import LocalAdmission
from keygate.control.base import Event, Limits, Rejected
from keygate.control.keypool import POOL_GUARD_WINDOW_S, KeyEntry, LocalKeyPool
from keygate.observe import log
from keygate.settings import ConfigError, ProviderConfig

DEFAULT_LEASE_S = 15.0
DEFAULT_TIMEOUT_S = 0.5
PROBE_S = 1.0  # how often an unreachable Redis is tried again
FULL_POLL_S = 1.0  # a head waiter at a full gate re-asks at least this often (lost notices)
READY_CACHE_S = 0.05  # a failed pick's "ready in" answers the ready_in() that follows it
SYNC_BATCH = 500
EVENTS = "keygate:events"
RELEASES = "keygate:release"

# --- Lua ------------------------------------------------------------------------------------
# ARGV[1] is always "now": empty in production (Redis TIME, one clock for the fleet); tests
# pass a time to make the arithmetic exact.

_PRELUDE = """
local function now_s()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
"""

_POOL = """
local ST, RING, INRING, COOL, HOLD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local LIM, STRIKES, G429, GUARD, ADM = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local NAMES = {a = 'active', c = 'cooling', i = 'invalid', x = 'exhausted', d = 'disabled'}
local function code_of(v) return string.sub(v, 1, 1) end
local function until_of(v) return tonumber(string.sub(v, 3)) or 0 end
-- write a key's state and keep the ring and the time indexes in step
local function place(id, code, untl)
  if code == 'a' then
    redis.call('HSET', ST, id, 'a')
    if redis.call('SADD', INRING, id) == 1 then redis.call('RPUSH', RING, id) end
    redis.call('ZREM', COOL, id)
    redis.call('ZREM', HOLD, id)
  elseif code == 'c' then
    redis.call('HSET', ST, id, 'c:' .. fmt(untl))
    redis.call('ZADD', COOL, untl, id)
    redis.call('ZREM', HOLD, id)
  elseif code == 'i' or code == 'x' then
    redis.call('HSET', ST, id, code .. ':' .. fmt(untl))
    redis.call('ZADD', HOLD, untl, id)
    redis.call('ZREM', COOL, id)
  else
    redis.call('HSET', ST, id, 'd')
    redis.call('ZREM', COOL, id)
    redis.call('ZREM', HOLD, id)
  end
end
local function announce(channel, provider, id, code, untl, err, strikes)
  local msg = {t = 'health', p = provider, id = tonumber(id), s = NAMES[code], u = fmt(untl)}
  if err ~= '' then msg.e = err end
  if strikes then msg.k = strikes end
  redis.call('PUBLISH', channel, cjson.encode(msg))
end
-- cooling keys whose time has come go back into the ring
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', COOL, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    local v = redis.call('HGET', ST, id)
    if v and code_of(v) == 'c' and until_of(v) <= now then
      place(id, 'a', 0)
    else
      redis.call('ZREM', COOL, id)
    end
  end
end
local function key_limits(id, drpm, dmc)
  local rpm, mc = drpm, dmc
  local lim = redis.call('HGET', LIM, id)
  if lim then
    local r, m = string.match(lim, '^(%d+):(%d+)$')
    r, m = tonumber(r), tonumber(m)
    if r and r > 0 then rpm = r end
    if m and m > 0 then mc = m end
  end
  return rpm, mc
end
-- 0 when the key's own limits allow one more request now, else seconds to wait
local function limit_wait(prefix, id, now, rpm, mc)
  if mc > 0 then
    local ck = prefix .. 'c:' .. id
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
    if redis.call('ZCARD', ck) >= mc then return 1.0 end
  end
  if rpm > 0 then
    local rk = prefix .. 'r:' .. id
    if redis.call('LLEN', rk) >= rpm then
      local oldest = tonumber(redis.call('LINDEX', rk, rpm - 1))
      if oldest and now - oldest < 60 then return 60 - (now - oldest) end
    end
  end
  return 0
end
"""

# KEYS: adm, leases. ARGV: now, rps, burst, max_conn, lease id, ttl.
# -> {1, tokens left} | {0, wait s, earliest lease expiry s}; wait -1: the gate is full.
ADMIT_LUA = (
    _PRELUDE
    + """
local now = now_s()
local rps, burst, maxc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[6])
local st = redis.call('HMGET', KEYS[1], 'tokens', 'stamp', 'pause')
local pause = tonumber(st[3])
if pause and pause > now then return {0, fmt(pause - now), '0'} end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= maxc then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, '-1', fmt(tonumber(first[2]) - now)}
  end
end
local tokens = -1
if rps > 0 then
  if burst < 1 then burst = 1 end
  tokens = tonumber(st[1])
  local stamp = tonumber(st[2])
  if tokens == nil or stamp == nil then
    tokens = burst
    stamp = now
  end
  if now > stamp then
    tokens = tokens + (now - stamp) * rps
    stamp = now
  end
  if tokens > burst then tokens = burst end
  if tokens < 1 then return {0, fmt((1 - tokens) / rps), '0'} end
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'stamp', stamp)
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(3600, burst / rps + 60) * 1000))
end
if maxc > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 3000))
end
return {1, fmt(tokens)}
"""
)

# KEYS: leases. ARGV: now, lease id, max_conn, channel, provider.
RELEASE_SLOT_LUA = (
    _PRELUDE
    + """
local full = redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3])
local n = redis.call('ZREM', KEYS[1], ARGV[2])
if n == 1 and full then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return n
"""
)

# KEYS: zsets (one per lease). ARGV: now, ttl, lease ids aligned with KEYS.
RENEW_LUA = (
    _PRELUDE
    + """
local now = now_s()
local ttl = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + ttl, ARGV[i + 2])
  redis.call('PEXPIRE', k, math.ceil(ttl * 3000))
end
return #KEYS
"""
)

# KEYS: leases. ARGV: now, this instance's lease prefix, the leases it holds... Drops the
# others of ours: grants whose answer was lost when the connection broke.
CLEAN_LUA = (
    _PRELUDE
    + """
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local mine, n = ARGV[2], 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #mine) == mine and not keep[m] then
    redis.call('ZREM', KEYS[1], m)
    n = n + 1
  end
end
return n
"""
)

# KEYS: adm. ARGV: now, until.
PAUSE_LUA = (
    _PRELUDE
    + """
local untl = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0') or 0
if untl > cur then
  redis.call('HSET', KEYS[1], 'pause', untl)
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
return 1
"""
)

# KEYS: pool keys. ARGV: now, prefix, mode (pick|ready), default rpm, default max_conn,
# lease id, ttl, excluded ids... -> {id | '', wait s (-1: none without an admin), leased 1|0}
PICK_LUA = (
    _PRELUDE
    + _POOL
    + """
local now = now_s()
local prefix, mode = ARGV[2], ARGV[3]
local drpm, dmc = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl = tonumber(ARGV[7])
local excl = {}
for i = 8, #ARGV do excl[ARGV[i]] = true end
promote(now)
local best = nil
local n = redis.call('LLEN', RING)
if n > 2000 then n = 2000 end
if mode == 'pick' then
  for _ = 1, n do
    local id = redis.call('LPOP', RING)
    if not id then break end
    if redis.call('HGET', ST, id) ~= 'a' then
      redis.call('SREM', INRING, id)
    else
      redis.call('RPUSH', RING, id)
      if not excl[id] then
        local rpm, mc = key_limits(id, drpm, dmc)
        local w = limit_wait(prefix, id, now, rpm, mc)
        if w == 0 then
          local leased = '0'
          if mc > 0 then
            local ck = prefix .. 'c:' .. id
            redis.call('ZADD', ck, now + ttl, ARGV[6])
            redis.call('PEXPIRE', ck, math.ceil(ttl * 3000))
            leased = '1'
          end
          if rpm > 0 then
            local rk = prefix .. 'r:' .. id
            redis.call('LPUSH', rk, fmt(now))
            redis.call('LTRIM', rk, 0, rpm - 1)
            redis.call('PEXPIRE', rk, 61000)
          end
          return {id, '0', leased}
        end
        if not best or w < best then best = w end
      end
    end
  end
else
  for _, id in ipairs(redis.call('LRANGE', RING, 0, n - 1)) do
    if not excl[id] and redis.call('HGET', ST, id) == 'a' then
      local rpm, mc = key_limits(id, drpm, dmc)
      local w = limit_wait(prefix, id, now, rpm, mc)
      if w == 0 then return {'', '0', '0'} end
      if not best or w < best then best = w end
    end
  end
end
local cool = redis.call('ZRANGE', COOL, 0, 63, 'WITHSCORES')
for i = 1, #cool, 2 do
  if not excl[cool[i]] then
    local w = math.max(0, tonumber(cool[i + 1]) - now)
    if not best or w < best then best = w end
    break
  end
end
if not best then
  local held = redis.call('ZRANGE', HOLD, 0, 63, 'WITHSCORES')
  for i = 1, #held, 2 do
    local v = redis.call('HGET', ST, held[i])
    if v and code_of(v) == 'x' then
      best = math.max(0, tonumber(held[i + 1]) - now)
      break
    end
  end
end
return {'', best and fmt(best) or '-1', '0'}
"""
)

# KEYS: pool keys. ARGV: now, prefix, id, event (ok|rl|inv|exh|none), until, lease id,
# cooldown_s, exhausted_cooldown_s, recheck_interval_s, channel, provider, error, window.
# -> {''} | {'state', status, until, strikes} | {'guard', pause, '', restored ids...}
RELEASE_KEY_LUA = (
    _PRELUDE
    + _POOL
    + """
local now = now_s()
local prefix, id, ev = ARGV[2], ARGV[3], ARGV[4]
local untl = tonumber(ARGV[5])
if ARGV[6] ~= '' then redis.call('ZREM', prefix .. 'c:' .. id, ARGV[6]) end
if ev == 'ok' then
  redis.call('HDEL', STRIKES, id)
  redis.call('HSET', GUARD, 'ok', now)
  redis.call('PEXPIRE', GUARD, 3600000)
  return {''}
end
local channel, provider, err = ARGV[10], ARGV[11], ARGV[12]
if ev == 'rl' then
  local window = tonumber(ARGV[13])
  redis.call('ZADD', G429, now, id)
  local last_ok = tonumber(redis.call('HGET', GUARD, 'ok') or '0') or 0
  redis.call('ZREMRANGEBYSCORE', G429, '-inf', '(' .. fmt(math.max(now - window, last_ok)))
  redis.call('PEXPIRE', G429, math.ceil(window * 1000) + 1000)
  local eligible = redis.call('HLEN', ST)
  if eligible >= 2 and redis.call('ZCARD', G429) >= math.min(3, eligible) then
    -- every recent try across several keys was refused: the provider is saturated, not
    -- these keys. Pause the provider for the whole fleet; keep the keys active.
    local ids = redis.call('ZRANGE', G429, 0, -1)
    redis.call('DEL', G429)
    local out = {'guard', '', ''}
    for _, k in ipairs(ids) do
      local v = redis.call('HGET', ST, k)
      if v and code_of(v) == 'c' then
        place(k, 'a', 0)
        table.insert(out, k)
      end
    end
    local pause = now + math.min(tonumber(ARGV[7]), 5)
    if untl and untl > now then pause = untl end
    local cur = tonumber(redis.call('HGET', ADM, 'pause') or '0') or 0
    if pause > cur then
      redis.call('HSET', ADM, 'pause', pause)
      redis.call('PEXPIRE', ADM, 3600000)
    end
    out[2] = fmt(pause)
    local restored = {}
    for i = 4, #out do restored[#restored + 1] = tonumber(out[i]) end
    redis.call('PUBLISH', channel, cjson.encode({t = 'guard', p = provider, pause = fmt(pause),
      ids = restored}))
    return out
  end
  if redis.call('HGET', ST, id) ~= 'a' then
    redis.call('PUBLISH', channel, cjson.encode({t = '429', p = provider}))
    return {''}
  end
  local strikes = redis.call('HINCRBY', STRIKES, id, 1)
  if not untl or untl <= now then
    untl = now + tonumber(ARGV[7]) * 2 ^ math.min(strikes - 1, 4)
  end
  place(id, 'c', untl)
  announce(channel, provider, id, 'c', untl, err, strikes)
  return {'state', 'cooling', fmt(untl), tostring(strikes)}
end
if ev == 'inv' or ev == 'exh' then
  local v = redis.call('HGET', ST, id)
  if not v or v == 'd' then return {''} end
  local code, hold = 'i', tonumber(ARGV[9])
  if ev == 'exh' then code, hold = 'x', tonumber(ARGV[8]) end
  untl = now + hold
  place(id, code, untl)
  announce(channel, provider, id, code, untl, err, nil)
  return {'state', NAMES[code], fmt(untl), '0'}
end
return {''}
"""
)

# KEYS: pool keys. ARGV: now, id, code, until, channel, provider, error. An admin's (or a
# re-check's) word: written as is.
SET_LUA = (
    _PRELUDE
    + _POOL
    + """
local id, code, untl = ARGV[2], ARGV[3], tonumber(ARGV[4]) or 0
place(id, code, untl)
if code == 'a' then redis.call('HDEL', STRIKES, id) end
announce(ARGV[5], ARGV[6], id, code, untl, ARGV[7], nil)
return 1
"""
)

# KEYS: pool keys. ARGV: now, channel, provider, then (id, code, until, rpm, max_conn)...
# Registers keys; Redis's health wins (it is fresher than the store), except that `disabled`
# is the admin's: the store's word on it wins both ways. -> the state of each key after.
SYNC_LUA = (
    _PRELUDE
    + _POOL
    + """
local now = now_s()
local out = {}
for i = 4, #ARGV, 5 do
  local id, code, untl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0
  local rpm, mc = tonumber(ARGV[i + 3]) or 0, tonumber(ARGV[i + 4]) or 0
  if code == 'c' and untl <= now then code = 'a' end
  local cur = redis.call('HGET', ST, id)
  local target = nil
  if not cur then
    target = code
  elseif code == 'd' and cur ~= 'd' then
    target = 'd'
  elseif cur == 'd' and code ~= 'd' then
    target = code
  end
  if target then
    place(id, target, untl)
    if cur then announce(ARGV[2], ARGV[3], id, target, untl, '', nil) end
  elseif cur == 'a' and redis.call('SADD', INRING, id) == 1 then
    redis.call('RPUSH', RING, id)
  end
  if rpm > 0 or mc > 0 then
    redis.call('HSET', LIM, id, rpm .. ':' .. mc)
  else
    redis.call('HDEL', LIM, id)
  end
  out[#out + 1] = redis.call('HGET', ST, id)
end
return out
"""
)

# KEYS: pool keys. ARGV: now, prefix, ids... (the ring drops them lazily)
REMOVE_LUA = (
    _PRELUDE
    + _POOL
    + """
for i = 3, #ARGV do
  local id = ARGV[i]
  redis.call('HDEL', ST, id)
  redis.call('HDEL', LIM, id)
  redis.call('HDEL', STRIKES, id)
  redis.call('ZREM', COOL, id)
  redis.call('ZREM', HOLD, id)
  redis.call('ZREM', G429, id)
  redis.call('DEL', ARGV[2] .. 'c:' .. id, ARGV[2] .. 'r:' .. id)
end
return #ARGV - 2
"""
)


@dataclass(frozen=True)
class Script:
    name: str
    src: str
    sha: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.src.encode()).hexdigest())


ADMIT = Script("admit", ADMIT_LUA)
RELEASE_SLOT = Script("release_slot", RELEASE_SLOT_LUA)
RENEW = Script("renew", RENEW_LUA)
CLEAN = Script("clean", CLEAN_LUA)
PAUSE = Script("pause", PAUSE_LUA)
PICK = Script("pick", PICK_LUA)
RELEASE_KEY = Script("release_key", RELEASE_KEY_LUA)
SET = Script("set", SET_LUA)
SYNC = Script("sync", SYNC_LUA)
REMOVE = Script("remove", REMOVE_LUA)
SCRIPTS = (ADMIT, RELEASE_SLOT, RENEW, CLEAN, PAUSE, PICK, RELEASE_KEY, SET, SYNC, REMOVE)

CODES = {"active": "a", "cooling": "c", "invalid": "i", "exhausted": "x", "disabled": "d"}
NAMES = {v: k for k, v in CODES.items()}
EVENT_CODES = {
    Event.OK: "ok",
    Event.RATE_LIMITED: "rl",
    Event.INVALID: "inv",
    Event.EXHAUSTED: "exh",
}


def decode_state(raw: bytes) -> tuple[str, float]:
    """`b"c:1712.5"` -> ("cooling", 1712.5)."""
    text = raw.decode()
    return NAMES.get(text[:1], "active"), float(text[2:]) if len(text) > 2 else 0.0


# --- the connection ---------------------------------------------------------------------------


class RedisDown(Exception):
    """Redis did not answer (in time): the caller serves this decision locally."""


class ReplyError(Exception):
    """An error reply from Redis (`-ERR ...`)."""


class _Incomplete(Exception):
    pass


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP; numbers as their shortest exact text (`repr` of a float)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if a.__class__ is bytes else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from `buf[pos:]`; raises `_Incomplete` when it has not all arrived."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 36:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind == 42:  # * array
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(line), pos
    if kind == 43:  # + simple string
        return line, pos
    if kind == 45:  # - error
        return ReplyError(line.decode("utf-8", "replace")), pos
    raise ValueError(f"unexpected RESP type byte {kind!r}")


Callback = Callable[[Any], None]


def _safely(cb: Callback, value: Any) -> None:
    """Run an answer's callback; its failure is logged, never taken out on the connection."""
    try:
        cb(value)
    except Exception as exc:
        log.error("shared state: callback failed: %r", exc)


class RespPipe(asyncio.Protocol):
    """One pipelined Redis connection: each command is written when issued, answers are matched
    in order. A caller that gives up (cancelled) leaves its answer to an `orphan` callback, so a
    grant nobody takes is handed back instead of leaking until its lease expires."""

    def __init__(self, on_lost: Callable[[RespPipe, str], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: deque[tuple[asyncio.Future[Any] | None, float, Callback | None]] = deque()
        self._out: list[bytes] = []  # commands issued in this loop iteration: one write
        self._on_lost = on_lost
        self.closed = False

    async def open(self, conn: dict[str, Any]) -> None:
        if conn["path"]:
            await self._loop.create_unix_connection(lambda: self, conn["path"])
        else:
            ctx = ssl.create_default_context() if conn["ssl"] else None
            await self._loop.create_connection(lambda: self, conn["host"], conn["port"], ssl=ctx)
        if conn["password"]:
            auth = (
                ["AUTH", conn["username"], conn["password"]]
                if conn["username"]
                else ["AUTH", conn["password"]]
            )
            await self.call(auth)
        if conn["db"]:
            await self.call(["SELECT", conn["db"]])

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost ({exc})" if exc else "connection closed by Redis"
        already = self.closed
        self._shut(reason)
        if not already:
            self._on_lost(self, reason)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        pending = self._pending
        try:
            while pos < size:
                value, pos = parse(buf, pos)
                fut, _, cb = pending.popleft()
                if fut is None:
                    if cb is not None:
                        _safely(cb, value)
                elif fut.cancelled():
                    if cb is not None and not isinstance(value, ReplyError):
                        _safely(cb, value)
                elif isinstance(value, ReplyError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        except _Incomplete:
            pass
        except Exception as exc:  # a protocol error (or our bug): never trust this socket again
            log.error("shared state: bad reply from Redis (%s: %s)", type(exc).__name__, exc)
            self.close(f"bad reply: {exc}")
            self._on_lost(self, f"bad reply: {exc}")
            return
        del buf[:pos]

    # API
    def _write(self, data: bytes) -> None:
        if self._transport is None or self.closed:
            raise RedisDown("not connected")
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed and out:
            self._transport.write(b"".join(out))

    def send(self, args: Sequence[Any], cb: Callback | None = None) -> None:
        """Fire and forget: `cb` gets the answer (or the exception) later."""
        self._write(pack(args))
        self._pending.append((None, self._loop.time(), cb))

    def call(self, args: Sequence[Any], orphan: Callback | None = None) -> asyncio.Future[Any]:
        """Sent in order with every other command; the future resolves with the answer
        (raises ReplyError/RedisDown)."""
        self._write(pack(args))
        fut = self._loop.create_future()
        self._pending.append((fut, self._loop.time(), orphan))
        return fut

    def oldest_age(self) -> float:
        return self._loop.time() - self._pending[0][1] if self._pending else 0.0

    def close(self, reason: str = "closed") -> None:
        if self._transport is not None and not self.closed:
            self._flush()
            self._transport.close()  # buffered writes (releases) still go out
        self._shut(reason)

    def _shut(self, reason: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, deque()
        err = RedisDown(reason)
        for fut, _, cb in pending:
            if fut is None:
                if cb is not None:
                    with contextlib.suppress(Exception):
                        cb(err)
            elif not fut.done():
                fut.set_exception(err)
                fut.exception()  # retrieved: callers may be gone


def parse_redis_url(url: str) -> tuple[str, dict[str, Any], float, float]:
    """(URL for redis-py, connection fields, lease_s, timeout_s); keygate's own options ride
    in the query string (`?lease_s=15&timeout_s=0.5`) so one variable says it all."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"KEYGATE_REDIS_URL must start with redis://, rediss:// or unix://, got {url.split(':')[0]!r}"
        )
    query = parse_qs(parts.query)
    try:
        lease_s = float(query.pop("lease_s", [DEFAULT_LEASE_S])[0])
        timeout_s = float(query.pop("timeout_s", [DEFAULT_TIMEOUT_S])[0])
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"environment variable KEYGATE_REDIS_URL: {exc}") from None
    if not (lease_s > 0 and timeout_s > 0):
        raise ConfigError(
            "environment variable KEYGATE_REDIS_URL: lease_s and timeout_s must be > 0"
        )
    rest = urlencode(query, doseq=True)
    clean = url.split("?")[0] + (f"?{rest}" if rest else "")
    db = (
        query.get("db", [""])[0] or (parts.path.strip("/") if parts.scheme != "unix" else "") or "0"
    )
    conn = {
        "path": parts.path if parts.scheme == "unix" else "",
        "host": parts.hostname or "127.0.0.1",
        "port": port or 6379,
        "ssl": parts.scheme == "rediss",
        "username": unquote(parts.username) if parts.username else "",
        "password": unquote(parts.password) if parts.password else "",
        "db": int(db),
    }
    return clean, conn, lease_s, timeout_s


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


# --- the state behind every provider ----------------------------------------------------------


class SharedState:
    """The Redis connection, its health, and the background work of the shared forms."""

    def __init__(
        self, url: str, fleet_size: int = 1, clock: Callable[[], float] | None = None
    ) -> None:
        self.clock = clock  # tests: a fake wall clock, passed to the scripts as "now"
        self.url, self._conn, self.lease_s, self.timeout_s = parse_redis_url(url)
        self.display_url = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url.split("?")[0])
        self.fleet_size = max(1, fleet_size)
        self.instance = secrets.token_hex(6)
        self.up = False
        self.reason = "not connected yet"
        self.since = time.time()
        self.admissions: dict[str, SharedAdmission] = {}
        self.pools: dict[str, SharedKeyPool] = {}
        self._seq = itertools.count(1)
        self._pipe: RespPipe | None = None
        self._pubsub: Any = None
        self._ps_client: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._on_change: Callable[[], Awaitable[None]] | None = None
        self._change_task: asyncio.Task[None] | None = None
        self._change_again = False
        self._down_logged = False
        self._connected_once = False

    # --- factories (ProviderRuntime) ---------------------------------------------------------
    def admission(self, limits: Limits, cfg: ProviderConfig) -> SharedAdmission:
        adm = SharedAdmission(limits, cfg, self)
        self.admissions[cfg.name] = adm
        return adm

    def pool(self, cfg: ProviderConfig) -> SharedKeyPool:
        pool = SharedKeyPool(cfg, self)
        self.pools[cfg.name] = pool
        return pool

    def now(self) -> str:
        """ARGV[1] of every script: empty means Redis TIME."""
        return "" if self.clock is None else repr(self.clock())

    def lease_id(self) -> str:
        return f"{self.instance}:{next(self._seq)}"

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self, on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        """Connect (never fatal: an unreachable Redis means local limits until it answers)."""
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._on_change = on_change
        self._ps_client = Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await self._connect()
        except Exception as exc:
            self._went_down(_describe(exc))
        loop = asyncio.get_running_loop()
        for coro in (self._supervise(), self._renew_loop(), self._watchdog()):
            self._tasks.append(loop.create_task(coro))

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

    async def _connect(self) -> None:
        pipe = RespPipe(self._lost)
        ps = None
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await pipe.open(self._conn)
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
        was_down = self._down_logged
        self.up = True
        self._down_logged = False
        self.reason = ""
        if was_down:
            log.warning(
                "shared state: Redis %s answers again after %.1fs; limits and key health are "
                "shared by the fleet again",
                self.display_url,
                time.time() - self.since,
            )
        else:
            log.info("shared state: Redis %s (slot leases %gs)", self.display_url, self.lease_s)
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
                await asyncio.sleep(PROBE_S)
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
            for chunk in _chunks(leases, SYNC_BATCH):
                self.fire(
                    RENEW, [adm.leases_key] * len(chunk), ["", self.lease_s, *chunk], force=force
                )
        for pool in self.pools.values():
            pairs = [(pool.conn_key(kid), lease) for kid, ls in pool.leases.items() for lease in ls]
            for chunk in _chunks(pairs, SYNC_BATCH):
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
        """Tell every instance that keys or provider settings changed in the store."""
        pipe = self._pipe
        if pipe is not None and self.up:
            pipe.send(
                ["PUBLISH", EVENTS, orjson.dumps({"t": kind, "src": self.instance})], self._fired
            )

    # --- events ---------------------------------------------------------------------------------
    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == b"keygate:release":
            adm = self.admissions.get(data.decode())
            if adm is not None:
                adm.wake()
            return
        msg = orjson.loads(data)
        kind = msg.get("t")
        if kind in ("keys", "provider"):
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
        if self.up:
            return {"state": "redis", "redis": self.display_url}
        return {
            "state": "local-fallback",
            "state_reason": f"Redis unreachable: {self.reason}",
            "state_since": round(self.since, 3),
            "redis": self.display_url,
            "fleet_size": self.fleet_size,
        }

    def banner(self) -> str:
        if self.up:
            return f"redis {self.display_url} (limits and key health shared; slot leases {self.lease_s:g}s)"
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


# --- admission ----------------------------------------------------------------------------------


class SharedSlot:
    __slots__ = ("_owner", "lease", "queued")

    def __init__(self, owner: SharedAdmission, lease: str | None) -> None:
        self._owner: SharedAdmission | None = owner
        self.lease = lease
        self.queued = False  # it waited in the queue (its client may have left meanwhile)

    async def release(self) -> None:
        self.release_now()

    def release_now(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._give_back(self)


class SharedAdmission(LocalAdmission):
    """Token bucket + gate in Redis (one ADMIT script per decision), FIFO queue in process.

    The local form underneath is the fallback: its limits are the fleet's share. Every slot is
    also counted there, so a switch to local mid-flight knows what this instance holds."""

    def __init__(self, limits: Limits, cfg: ProviderConfig, shared: SharedState) -> None:
        super().__init__(limits)
        self.name = cfg.name
        self._cfg = cfg  # live: the fleet's limits, changed at run time by the admin
        self._shared = shared
        prefix = f"keygate:{{{cfg.name}}}:"
        self.leases_key = prefix + "leases"
        self._keys = [prefix + "adm", self.leases_key]
        self.held: dict[str, SharedSlot] = {}  # leased slots, for renewal
        self._unleased: set[SharedSlot] = set()  # taken while Redis was away
        self._queue: deque[asyncio.Future[SharedSlot | None]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None

    # --- the decision ---------------------------------------------------------------------------
    async def _try(self) -> SharedSlot | float | None:
        """A slot, or seconds to wait before asking again, or None: Redis is away."""
        cfg, st = self._cfg, self._shared
        self._wake.clear()
        if cfg.rps <= 0 and cfg.max_conn <= 0:  # nothing to share but the guard's pause
            wait = self._paused_until - self._clock()
            return wait if wait > 0 else self._granted(None)
        lease = st.lease_id() if cfg.max_conn > 0 else ""
        try:
            res = await st.run(
                ADMIT,
                self._keys,
                ["", cfg.rps, max(1, cfg.burst), cfg.max_conn, lease, st.lease_s],
                self._orphan_admit(lease),
            )
        except RedisDown:
            return None
        if res[0] == 1:
            return self._granted(lease or None)
        wait = float(res[1])
        if wait < 0:  # full: a release notice wakes us; the earliest lease expiry at the latest
            return max(0.001, min(float(res[2]), FULL_POLL_S))
        return max(wait, 0.0005)

    def _orphan_admit(self, lease: str) -> Callback:
        def orphan(res: Any) -> None:  # granted to a caller who left: hand it straight back
            if res and res[0] == 1 and lease:
                self._shared.fire(
                    RELEASE_SLOT,
                    [self.leases_key],
                    ["", lease, self._cfg.max_conn, RELEASES, self.name],
                )

        return orphan

    def _granted(self, lease: str | None) -> SharedSlot:
        slot = SharedSlot(self, lease)
        if lease is not None:
            self.held[lease] = slot
        self._in_flight += 1
        self.admitted += 1
        return slot

    def _give_back(self, slot: SharedSlot) -> None:
        lease = slot.lease
        if lease is not None:
            self.held.pop(lease, None)
            self._shared.fire(
                RELEASE_SLOT,
                [self.leases_key],
                ["", lease, self._cfg.max_conn, RELEASES, self.name],
            )
        else:
            self._unleased.discard(slot)
        self._release()  # local count (and local waiters, in fallback)
        if self._queue:
            self._wake.set()

    async def acquire(self) -> SharedSlot:  # type: ignore[override]
        if not self._shared.up:
            return await self._acquire_local()
        wait = 0.0
        if not self._queue:
            got = await self._try()
            if got is None:
                return await self._acquire_local()
            if isinstance(got, SharedSlot):
                return got
            wait = got
        limits = self._limits
        if self._waiting + self._queued >= limits.queue:
            self.rejected += 1
            raise Rejected("queue full", self._estimate_wait())
        fut: asyncio.Future[SharedSlot | None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        self._queued += 1
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._serve_queue(wait))
        try:
            async with asyncio.timeout(
                limits.queue_timeout_s if limits.queue_timeout_s > 0 else None
            ):
                slot = await fut
        except TimeoutError:
            if not (fut.done() and not fut.cancelled()):
                self.rejected += 1
                raise Rejected("queue timeout", self._estimate_wait()) from None
            slot = fut.result()  # granted in the same instant: keep it
        except BaseException:
            if fut.done() and not fut.cancelled():
                got_slot = fut.result()
                if got_slot is not None:
                    got_slot.release_now()  # granted but nobody will use it
            else:
                fut.cancel()
            raise
        finally:
            self._queued -= 1
        if slot is None:  # Redis went away while we waited: carry on in the local queue
            return await self._acquire_local()
        slot.queued = True
        return slot

    async def _serve_queue(self, wait: float) -> None:
        try:
            await self._serve(wait)
        except Exception as exc:  # never strand the waiters: they carry on locally
            log.error("shared state: admission queue failed: %r", exc)
            self._spill()

    async def _serve(self, wait: float) -> None:
        """The head waiter asks Redis; after the wait Redis named, or at a release notice."""
        q = self._queue
        while True:
            while q and q[0].done():
                q.popleft()
            if not q:
                return
            if not self._shared.up:
                self._spill()
                return
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                wait = 0.0
                continue
            got = await self._try()
            if got is None:
                self._spill()
                return
            if isinstance(got, SharedSlot):
                while q and q[0].done():
                    q.popleft()
                if q:
                    q.popleft().set_result(got)
                else:
                    got.release_now()
            else:
                wait = got

    def _spill(self) -> None:
        while self._queue:
            fut = self._queue.popleft()
            if not fut.done():
                fut.set_result(None)

    async def _acquire_local(self) -> SharedSlot:
        local = await LocalAdmission.acquire(self)  # counts the slot in _in_flight; we own it
        slot = SharedSlot(self, None)
        slot.queued = local.queued
        self._unleased.add(slot)
        return slot

    def lease_local_slots(self) -> None:
        """Redis is back: slots taken locally meanwhile get leases, so the fleet counts them."""
        unleased, self._unleased = self._unleased, set()
        if self._cfg.max_conn <= 0:
            return
        for slot in unleased:
            slot.lease = self._shared.lease_id()
            self.held[slot.lease] = slot

    def wake(self) -> None:
        self._wake.set()

    def on_pause(self, until: float) -> None:
        LocalAdmission.pause_until(self, until)
        self.wake()

    # --- configuration ----------------------------------------------------------------------------
    def configure(self, limits: Limits) -> None:
        super().configure(limits)
        self.wake()

    def pause_until(self, until: float) -> None:
        super().pause_until(until)
        self._shared.fire(PAUSE, [self._keys[0]], ["", until])
        self.wake()

    def _estimate_wait(self) -> float:
        rps = self._cfg.rps if self._shared.up else self._limits.rps
        return max(1.0, (self._waiting + self._queued + 1) / rps) if rps > 0 else 1.0

    def snapshot(self) -> dict[str, float]:
        snap = super().snapshot()
        snap["queued"] = self._waiting + self._queued
        if self._shared.up:
            snap["max_conn"] = self._cfg.max_conn  # the fleet's gate; in_flight is ours
        return snap


# --- key pool -------------------------------------------------------------------------------------


class SharedKeyPool(LocalKeyPool):
    """Round-robin cursor and key health in Redis; secrets, counters and a mirror of the health
    in process (the admin page reads the mirror, the local fallback runs on it)."""

    def __init__(self, cfg: ProviderConfig, shared: SharedState) -> None:
        super().__init__(cfg, shared.clock or time.time)
        self.name = cfg.name
        self._shared = shared
        self._prefix = prefix = f"keygate:{{{cfg.name}}}:"
        names = ("st", "ring", "inring", "cool", "hold", "lim", "strikes", "g429", "guard", "adm")
        self._keys = [prefix + n for n in names]
        self.leases: dict[int, list[str]] = {}  # key id -> per-key connection leases we hold
        self._last_429 = -math.inf  # monotonic; while recent, successes are written (guard)
        self._none: tuple[tuple[int, ...], float, float] | None = None
        self._removed: set[int] = set()  # deleted here: a pick that names one deletes it there

    def conn_key(self, key_id: int) -> str:
        return f"{self._prefix}c:{key_id}"

    # --- the pick ---------------------------------------------------------------------------------
    async def acquire(self, exclude: Iterable[int] = ()) -> KeyEntry | None:
        st = self._shared
        if not st.up:
            return self.pick(exclude)
        cfg = self.cfg
        exclude = tuple(exclude)
        excl = [str(k) for k in exclude]
        for _ in range(3):
            lease = st.lease_id()
            try:
                res = await st.run(
                    PICK,
                    self._keys,
                    [
                        st.now(),
                        self._prefix,
                        "pick",
                        cfg.key_rpm,
                        cfg.key_max_conn,
                        lease,
                        st.lease_s,
                        *excl,
                    ],
                    self._orphan_pick(lease),
                )
            except RedisDown:
                return self.pick(exclude)
            raw_id, leased = res[0], res[2] == b"1"
            if not raw_id:
                wait = float(res[1])
                self._none = (tuple(exclude), wait, time.monotonic())
                return None
            key_id = int(raw_id)
            entry = self.entries.get(key_id)
            if entry is None:
                if leased:
                    self._fire_release(key_id, "none", lease)
                if key_id in self._removed:  # deleted while Redis was away
                    st.fire(REMOVE, self._keys, ["", self._prefix, key_id])
                else:  # added by another instance, not loaded here yet
                    st._changed()
                excl.append(raw_id.decode())
                continue
            if leased:
                self.leases.setdefault(key_id, []).append(lease)
            if entry.status != "active":  # Redis let it out of cooling (or an admin did)
                self._mirror(entry, "active", 0.0)
            now = self.clock()
            entry.inflight += 1
            entry.use_count += 1
            entry.last_used = now
            self.touched.add(key_id)
            rpm = entry.rpm or cfg.key_rpm
            if rpm:
                self._recent(entry, rpm).append(now)
            return entry
        return None

    def _orphan_pick(self, lease: str) -> Callback:
        def orphan(res: Any) -> None:
            if res and res[0] and res[2] == b"1":
                self._fire_release(int(res[0]), "none", lease)

        return orphan

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        st = self._shared
        if not st.up:
            return self.ready_in_now(exclude)
        excl = tuple(exclude)
        cached = self._none
        if (
            cached is not None
            and cached[0] == excl
            and time.monotonic() - cached[2] < READY_CACHE_S
        ):
            wait = cached[1]
        else:
            cfg = self.cfg
            try:
                res = await st.run(
                    PICK,
                    self._keys,
                    [
                        st.now(),
                        self._prefix,
                        "ready",
                        cfg.key_rpm,
                        cfg.key_max_conn,
                        "",
                        st.lease_s,
                        *map(str, excl),
                    ],
                )
            except RedisDown:
                return self.ready_in_now(exclude)
            wait = float(res[1])
        return None if wait < 0 else wait

    # --- outcomes ---------------------------------------------------------------------------------
    async def release(
        self, entry: KeyEntry, event: Event, until: float | None = None, error: str = ""
    ) -> float | None:
        st = self._shared
        held = self.leases.get(entry.id)
        lease = held.pop() if held else None
        if held is not None and not held:
            del self.leases[entry.id]
        if not st.up:
            return self.record(entry, event, until, error)
        code = EVENT_CODES.get(event, "none")
        if code in ("ok", "none"):
            # Health does not change: no answer to wait for (and often nothing to write).
            if lease is not None or (
                code == "ok"
                and (entry.strikes or self.clock() - self._last_429 < POOL_GUARD_WINDOW_S)
            ):
                self._fire_release(entry.id, code, lease or "")
            return self.record(entry, event, until, error)
        if code == "rl":
            self._last_429 = self.clock()
        try:
            res = await st.run(
                RELEASE_KEY,
                self._keys,
                self._release_args(entry.id, code, lease or "", until, error),
            )
        except RedisDown:
            return self.record(entry, event, until, error)
        if entry.inflight > 0:
            entry.inflight -= 1
        if error:
            entry.last_error = error
        kind = res[0]
        if kind == b"state":
            self._mirror(entry, res[1].decode(), float(res[2]), error, int(res[3]))
            self.changed.add(entry.id)
        elif kind == b"guard":
            self._restore(int(k) for k in res[3:])
            return float(res[1])
        return None

    def _release_args(
        self, key_id: int, code: str, lease: str, until: float | None, error: str
    ) -> list[Any]:
        cfg = self.cfg
        return [
            self._shared.now(),
            self._prefix,
            key_id,
            code,
            "" if until is None else until,
            lease,
            cfg.cooldown_s,
            cfg.exhausted_cooldown_s,
            cfg.recheck_interval_s,
            EVENTS,
            self.name,
            error[:300],
            POOL_GUARD_WINDOW_S,
        ]

    def _fire_release(self, key_id: int, code: str, lease: str) -> None:
        self._shared.fire(
            RELEASE_KEY, self._keys, self._release_args(key_id, code, lease, None, "")
        )

    # --- membership and admin (sync callers: written now, answers applied when they come) -------
    def add(self, entry: KeyEntry) -> None:
        super().add(entry)
        if self._shared.up:
            self._shared.fire(
                SYNC,
                self._keys,
                self._sync_args([entry]),
                lambda res: self._apply_sync([entry], res),
            )

    def remove(self, key_id: int) -> KeyEntry | None:
        entry = super().remove(key_id)
        if entry is not None:
            self.leases.pop(key_id, None)
            if len(self._removed) < 100_000:
                self._removed.add(key_id)
            self._shared.fire(REMOVE, self._keys, ["", self._prefix, key_id])
        return entry

    def set_status(
        self, key_id: int, status: str, until: float = 0.0, error: str | None = None
    ) -> KeyEntry | None:
        entry = super().set_status(key_id, status, until, error)
        if entry is not None:
            self._shared.fire(
                SET,
                self._keys,
                [
                    self._shared.now(),
                    key_id,
                    CODES.get(status, "a"),
                    until,
                    EVENTS,
                    self.name,
                    error or "",
                ],
            )
        return entry

    async def resync(self) -> None:
        """(Re)register every key; Redis's health comes back into the mirror."""
        entries = [e for e in self.entries.values() if e.status != "deleted"]
        removed = [k for k in self._removed if k not in self.entries]
        for batch in _chunks(removed, SYNC_BATCH):
            await self._shared.run(REMOVE, self._keys, ["", self._prefix, *batch], force=True)
        for batch in _chunks(entries, SYNC_BATCH):
            res = await self._shared.run(SYNC, self._keys, self._sync_args(batch), force=True)
            self._apply_sync(batch, res)

    def _sync_args(self, entries: Sequence[KeyEntry]) -> list[Any]:
        args: list[Any] = [self._shared.now(), EVENTS, self.name]
        for e in entries:
            args += [e.id, CODES.get(e.status, "a"), e.until, e.rpm, e.max_conn]
        return args

    def _apply_sync(self, entries: Sequence[KeyEntry], res: list[bytes | None]) -> None:
        for entry, raw in zip(entries, res, strict=False):
            if raw is None or entry.status == "deleted" or self.entries.get(entry.id) is not entry:
                continue
            status, until = decode_state(raw)
            if status != entry.status or (status != "active" and until != entry.until):
                self._mirror(entry, status, until)

    # --- the mirror ---------------------------------------------------------------------------------
    def _mirror(
        self,
        entry: KeyEntry,
        status: str,
        until: float,
        error: str | None = None,
        strikes: int | None = None,
    ) -> None:
        entry.status = status
        entry.until = until
        if error:
            entry.last_error = error
        if strikes is not None:
            # Redis's count, kept as is: a key back from cooling still has its strikes until a
            # success is written, so that success must reach Redis (see release)
            entry.strikes = strikes
        self._place(entry)

    def on_health(self, msg: dict[str, Any]) -> None:
        entry = self.entries.get(int(msg["id"]))
        if entry is None or entry.status == "deleted":
            return
        status = msg.get("s", "active")
        if status == "cooling":
            self._last_429 = self.clock()
        strikes = msg.get("k", 0 if status == "active" else None)  # an admin's "active" resets
        self._mirror(entry, status, float(msg.get("u") or 0.0), msg.get("e"), strikes)

    def on_guard(self, msg: dict[str, Any]) -> None:
        self._last_429 = self.clock()
        ids = msg.get("ids") or ()
        self._restore(int(k) for k in (ids if isinstance(ids, list) else ()))

    def note_429(self) -> None:
        self._last_429 = self.clock()

    def _restore(self, ids: Iterable[int]) -> None:
        for key_id in ids:
            entry = self.entries.get(key_id)
            if entry is not None and entry.status == "cooling":
                self._mirror(entry, "active", 0.0)
                self.changed.add(key_id)

    # --- the local fallback: the fleet's per-key limits, shared out -----------------------------
    def _share(self, limit: int) -> int:
        return max(1, limit // self._shared.fleet_size) if limit else 0

    def _recent(self, entry: KeyEntry, rpm: int) -> deque[float]:
        size = self._share(rpm)
        recent = entry.recent
        if recent is None or recent.maxlen != size:
            recent = entry.recent = deque(recent or (), maxlen=size)
        return recent

    def _limit_wait(self, entry: KeyEntry, now: float) -> float:
        max_conn = self._share(entry.max_conn or self.cfg.key_max_conn)
        if max_conn and entry.inflight >= max_conn:
            return 1.0
        rpm = entry.rpm or self.cfg.key_rpm
        if rpm:
            recent = self._recent(entry, rpm)
            if len(recent) >= (recent.maxlen or 0) and now - recent[0] < 60.0:
                return 60.0 - (now - recent[0])
        return 0.0
