"""Affinity pins: a conversation → the key that served it last (SPEC §15).

Without Redis they live in this process, bounded (least recently used out first), each use
renewing its TTL. With Redis every instance reads and writes the same pins (`GETEX` renews the
TTL as it reads), on the pipelined connection the request's admission already uses: the read
is written in the same batch as the admission script, the write is never waited for. When
Redis does not answer, the pins of this process serve (no error, only a pin that may be new).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from keygate.observe.logs import log

if TYPE_CHECKING:
    from keygate.control.redis import SharedState

PINS_MAX = 100_000  # per process; a pin is a few hundred bytes


class MemoryPins:
    """Pins of this process: LRU-bounded, each with an expiry pushed back by every use."""

    __slots__ = ("_clock", "_pins", "limit")

    def __init__(self, limit: int = PINS_MAX, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._pins: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, name: str, ttl: float) -> int | None:
        found = self._pins.get(name)
        if found is None:
            return None
        now = self._clock()
        key_id, expires = found
        if expires <= now:
            del self._pins[name]
            return None
        self._pins[name] = (key_id, now + ttl)
        self._pins.move_to_end(name)
        return key_id

    def put(self, name: str, key_id: int, ttl: float) -> None:
        pins = self._pins
        pins[name] = (key_id, self._clock() + ttl)
        pins.move_to_end(name)
        if len(pins) > self.limit:
            pins.popitem(last=False)


class Pins:
    """Where the pins are: Redis when configured and answering, else this process's."""

    __slots__ = ("_warned", "memory", "shared")

    def __init__(
        self,
        shared: SharedState | None = None,
        limit: int = PINS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.memory = MemoryPins(limit, clock)
        self._warned = False

    @staticmethod
    def _name(provider: str, conv: str) -> str:
        return f"keygate:{{{provider}}}:pin:{conv}"

    def ask(self, provider: str, conv: str, ttl: float) -> Any:
        """The pin's key id (None: no pin), or, with Redis, a future of the reply: asked
        before admission, so that the read goes out with the admission's own script."""
        name = f"keygate:{{{provider}}}:pin:{conv}"  # `_name`, inline: once per request
        shared = self.shared
        if shared is not None:
            fut = shared.command(("GETEX", name, "EX", math.ceil(ttl)))
            if fut is not None:
                return fut
        return self.memory.get(name, ttl)

    async def answer(self, asked: Any, provider: str, conv: str, ttl: float) -> int | None:
        """What `ask` said, awaited when it went to Redis (which failing, this process's)."""
        if asked is None or isinstance(asked, int):
            return asked
        try:
            value = await asked
        except Exception as exc:  # RedisDown, or an error reply: never the request's error
            if not self._warned:
                self._warned = True
                log.warning("affinity: pins read from this process (Redis: %s)", exc)
            return self.memory.get(self._name(provider, conv), ttl)
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def put(self, provider: str, conv: str, key_id: int, ttl: float) -> None:
        """Pin `conv` to `key_id` for `ttl` seconds (not waited for)."""
        name = self._name(provider, conv)
        self.memory.put(name, key_id, ttl)  # also here: it serves if Redis goes away
        shared = self.shared
        if shared is not None:
            shared.send(("SET", name, key_id, "EX", math.ceil(ttl)))
