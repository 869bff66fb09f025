"""Client limits for the whole fleet (SPEC §13): with Redis, one script decides each request
for every instance at once; without it, or while it does not answer, the instance's own
windows (`clients.limits`) decide, unchanged.

Why one script: counting in each instance's memory lets a client spend its limits once per
instance. Here the check and the count are one atomic EVALSHA (client_charge.lua), awaited
once per request; the token correction once the answer is known is written without waiting
(client_settle.lua). Every answer from Redis is mirrored into the local windows, so an outage
goes on from the fleet's latest counts, and a day Redis does not hold yet (a Redis restart)
starts from them.

Keys, under the client's hash tag (day and month as `clients.periods` names them):
  keygate:client:{<id>}:d:2026-12-02  hash  r, t: the UTC day's requests and tokens
  keygate:client:{<id>}:m:2026-12     hash  t: the UTC month's tokens
  keygate:client:{<id>}:rpm           zset  request id -> time (the sliding minute)
each expiring a minute after its window ends.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

from keygate.clients import limits
from keygate.clients.limits import Limited
from keygate.clients.periods import PERIODS

if TYPE_CHECKING:
    from keygate.control.redis.state import SharedState

Refusal = tuple[str, float]  # (the limit, seconds until it resets)


class Reservation(NamedTuple):
    """A request let through: the tokens it reserved, and whether Redis counted them (then
    the correction goes there too)."""

    tokens: int
    shared: bool


def has_limits(client: Limited) -> bool:
    return bool(client.rpm or client.rpd or client.tpd or client.monthly_tokens)


class ClientLimits:
    """`check` before a client's request goes anywhere, `settle` when its answer told the
    real token count; shared through `shared` (the gateway's Redis state) when there is one."""

    __slots__ = ("shared",)

    def __init__(self, shared: SharedState | None) -> None:
        self.shared = shared

    def _now(self) -> float:
        st = self.shared
        return st.clock() if st is not None and st.clock is not None else time.time()

    async def check(self, client: Limited, estimate: int) -> Reservation | Refusal:
        """A `Reservation` when the request may go (it is then counted, fleet-wide when
        shared); else the limit and the seconds until it resets. A client without limits, or
        an instance without Redis, costs no round trip."""
        st = self.shared
        now = self._now()
        if st is None or not st.up or not has_limits(client):
            return limits.check(client, estimate, now) or Reservation(estimate, False)
        # the Redis form is imported only by a gateway that has one (it is slow to import)
        from keygate.control.redis.connection import RedisDown
        from keygate.control.redis.scripts import CLIENT_CHARGE

        w = client.windows
        w.roll(now)
        p = PERIODS.at(now)
        args = [
            *(st.now(), client.rpm, client.rpd, client.tpd, client.monthly_tokens, estimate),
            *(repr(p.day_end), repr(p.month_end), st.lease_id()),
            *(w.day_requests, w.day_tokens, w.month_tokens),
        ]
        try:
            res = await st.run(CLIENT_CHARGE, _keys(client.id, p.day, p.month, True), args)
        except RedisDown:
            return limits.check(client, estimate, now) or Reservation(estimate, False)
        w.roll(now)
        w.day_requests, w.day_tokens, w.month_tokens = (int(x) for x in res[-3:])
        if res[0]:
            return res[1].decode(), float(res[2])
        if client.rpm:  # the local minute too, for an outage to come
            w.minute.append(now)
            while len(w.minute) > client.rpm:
                w.minute.popleft()
        return Reservation(estimate, True)

    def settle(self, client: Limited, reserved: Reservation, actual: int) -> None:
        """Replace the reservation by the tokens reported (none: it stays): in the local
        windows, and in Redis (written, not awaited) when it was made there."""
        now = self._now()
        limits.settle(client, reserved.tokens, actual, now)
        st = self.shared
        if reserved.shared and actual and actual != reserved.tokens and st is not None:
            from keygate.control.redis.scripts import CLIENT_SETTLE

            p = PERIODS.at(now)
            keys = _keys(client.id, p.day, p.month, False)
            st.fire(CLIENT_SETTLE, keys, [st.now(), actual - reserved.tokens])


def _keys(client_id: int, day: str, month: str, minute: bool) -> list[str]:
    prefix = f"keygate:client:{{{client_id}}}:"
    keys = [prefix + day, prefix + month]
    if minute:
        keys.append(prefix + "rpm")
    return keys
