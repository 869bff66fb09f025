"""One request's state as it travels the request path (`proxy.handler`)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from keygate.dialects import Dialect
from keygate.proxy.watchdog import Watchdog
from keygate.translate import Adapter

WATCH_AFTER_S = 0.05  # quick exchanges finish before a disconnect watcher is worth a task


_SERVED: dict[tuple[str, str], tuple[tuple[bytes, bytes], ...]] = {}
_SERVED_OFF: dict[tuple[str, str], tuple[tuple[bytes, bytes], ...]] = {}
AFFINITY = b"x-keygate-affinity"
AFFINITY_OFF = (AFFINITY, b"off")


def served_headers(
    provider: str, model: str, affinity_off: bool = False
) -> tuple[tuple[bytes, bytes], ...]:
    """`x-keygate-provider` and `x-keygate-model` (when the request named one); a model name
    that is not plain printable ASCII is percent-encoded, so it can never break the header.
    `affinity_off`: with `x-keygate-affinity: off` (a provider with affinity on says what its
    pick came to instead, `with_affinity`). Built once per provider and model: a gateway
    serves the same few again and again."""
    cache = _SERVED_OFF if affinity_off else _SERVED
    found = cache.get((provider, model))
    if found is not None:
        return found
    out = [(b"x-keygate-provider", provider.encode())]
    if model:
        shown = model if model.isascii() and model.isprintable() else quote(model, safe="/:@-._~")
        out.append((b"x-keygate-model", shown.encode()))
    if affinity_off:
        out.append(AFFINITY_OFF)
    if len(cache) >= 4096:  # model names come from clients: the cache stays bounded
        cache.clear()
    found = cache[(provider, model)] = tuple(out)
    return found


_AFFINITY_HEADERS = {r: (AFFINITY, r.encode()) for r in ("hit", "new", "moved")}


_WITH: dict[tuple[tuple[tuple[bytes, bytes], ...], str], tuple[tuple[bytes, bytes], ...]] = {}


def with_affinity(
    served: tuple[tuple[bytes, bytes], ...], result: str
) -> tuple[tuple[bytes, bytes], ...]:
    """`served` saying what the pick came to (`hit`, `new`, `moved`), once. Built once per
    served headers and result, as they are."""
    found = _WITH.get((served, result))
    if found is None:
        if len(_WITH) >= 4096:  # as `served_headers`' own cache: bounded
            _WITH.clear()
        found = _WITH[(served, result)] = (
            *(h for h in served if h[0] != AFFINITY),
            _AFFINITY_HEADERS[result],
        )
    return found


class Exchange:
    """One request's state: what the log line and counters need, and the two things that can
    cut it short (the client leaving, the upstream going silent)."""

    __slots__ = (
        "adapter",
        "cache",
        "client",
        "conv",
        "disconnected",
        "dog",
        "entry",
        "error",
        "finishing",
        "model",
        "provider",
        "receive",
        "reserved",
        "retries",
        "runtime",
        "served",
        "status",
        "task",
        "ticket",
        "upstream_status",
        "usage",
        "via",
        "watcher",
        "wire",
    )

    def __init__(self) -> None:
        self.finishing = False  # the final send has begun
        self.disconnected = False
        self.status = 0
        self.upstream_status = 0
        self.retries = 0
        self.entry: Any = None
        self.client: Any = None  # the client key's Client (None: master password or open)
        self.reserved: Any = None  # what the client's limits reserved for it (a Reservation)
        self.error = ""
        self.model = ""
        self.usage = [0, 0]
        self.ticket: Any = None  # the request's quota ticket (control.quota.Ticket)
        self.task: asyncio.Task[Any] | None = None
        self.receive: Any = None
        self.dog: Watchdog | None = None
        self.watcher: asyncio.Task[Any] | None = None
        self.wire: Dialect | None = None  # the dialect spoken on the upstream path
        self.provider = ""  # the provider of the try that answers
        self.runtime: Any = None  # its runtime, when the model chose it (a routed request)
        self.served: tuple[tuple[bytes, bytes], ...] = ()  # x-keygate-provider / -model of that try
        self.via: list[str] = []  # the targets a routed request tried, in order
        self.conv: str | None = None  # the conversation's name, when its provider pins them
        # set when the client's API family differs from the provider's (keygate.translate)
        self.adapter: Adapter | None = None
        self.cache: Any = None  # a cached route's `proxy.cache.Pending` (SPEC §19)

    def serve(self, provider: str, model: str, affinity_off: bool = False) -> None:
        """Name the provider and model of the try under way (the answer's x-keygate-*)."""
        self.provider = provider
        self.served = served_headers(provider, model, affinity_off)

    def arm(self, receive: Any, loop: asyncio.AbstractEventLoop | None = None) -> Watchdog:
        """Set up the watchdog, and a disconnect watcher that starts only if the exchange
        lasts: most answers are back before a watcher task would have paid for itself.
        `loop`: the server's, known at start (on Python 3.11 finding the running loop costs
        a getpid system call, twice per request here)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self.task = task
        self.receive = receive
        self.dog = Watchdog(loop, task, wake=self.watch, wake_after_s=WATCH_AFTER_S)
        return self.dog

    def watch(self) -> None:
        """Cancel the request's task the moment the client goes away."""
        if self.watcher is None and self.task is not None:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        message = await self.receive()
        # The server also reports a disconnect once the response is complete: ignored from
        # the final send on, so releases after it are never cut short.
        if message["type"] == "http.disconnect" and not self.finishing:
            self.disconnected = True
            assert self.task is not None
            self.task.cancel()

    def disarm(self) -> None:
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()
        if self.dog is not None:
            self.dog.close()
