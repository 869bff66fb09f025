"""One request's state as it travels the request path (`proxy.handler`)."""

from __future__ import annotations

import asyncio
from typing import Any

from keygate.dialects import Dialect
from keygate.proxy.watchdog import Watchdog

WATCH_AFTER_S = 0.05  # quick exchanges finish before a disconnect watcher is worth a task


class Exchange:
    """One request's state: what the log line and counters need, and the two things that can
    cut it short (the client leaving, the upstream going silent)."""

    __slots__ = (
        "client",
        "disconnected",
        "dog",
        "entry",
        "error",
        "finishing",
        "model",
        "receive",
        "reserved",
        "retries",
        "status",
        "task",
        "upstream_status",
        "usage",
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
        self.reserved: int | None = None  # tokens the client's limits reserved for it
        self.error = ""
        self.model = ""
        self.usage = [0, 0]
        self.task: asyncio.Task[Any] | None = None
        self.receive: Any = None
        self.dog: Watchdog | None = None
        self.watcher: asyncio.Task[Any] | None = None
        self.wire: Dialect | None = None  # the dialect spoken on the upstream path

    def arm(self, receive: Any) -> Watchdog:
        """Set up the watchdog, and a disconnect watcher that starts only if the exchange
        lasts: most answers are back before a watcher task would have paid for itself."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
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
