"""The prefix route's plan: one provider, named by the path, with the body already made for it
(translated when the client speaks another API family, its default model filled in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keygate.control.quota import Ticket
from keygate.proxy.attempt import Outgoing

if TYPE_CHECKING:
    from keygate.proxy.exchange import Exchange
    from keygate.proxy.unified import Try
    from keygate.runtime.provider import ProviderRuntime
    from keygate.translate import Adapter

_PLAIN: dict[int, list[Try]] = {}  # a provider's one leg without an adapter, made once


class PrefixPlan(Outgoing):
    """One target: the provider of the path, no via trail, the provider's own retries; what
    it is sent is the plan itself (one object for both, made on every request)."""

    __slots__ = ("legs", "rt")

    def __init__(
        self,
        rt: ProviderRuntime,
        adapter: Adapter | None,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
    ) -> None:
        # Outgoing's fields set here, not by its __init__: one call less on every request
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.rt = rt
        if adapter is None:
            legs = _PLAIN.get(id(rt))
            if legs is None or legs[0][0] is not rt:
                if len(_PLAIN) > 1024:  # runtimes come and go with reloads: stay bounded
                    _PLAIN.clear()
                legs = _PLAIN[id(rt)] = [(rt, None, None)]
            self.legs = legs
        else:
            self.legs = [(rt, None, adapter)]

    def budget(self, legs: list[Try]) -> int:
        return -1

    def prepare(self, leg: Try, ex: Exchange) -> Outgoing:
        # a client's reservation is the estimate read from its parsed body, when it has one
        reserved = ex.reserved.tokens if ex.reserved is not None else -1
        ex.ticket = Ticket(self.body, self.rt.cfg.default_max_tokens, ex.usage, reserved)
        return self
