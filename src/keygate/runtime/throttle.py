"""A throttle for failed password attempts, shared by the proxy and the admin.

Two token buckets of failures: one per client address and one for everyone together. A wrong
password is charged to both; once either is empty, the answer to a wrong password is 429 with
the time until the buckets allow another (never a sleep: a connection is not held). Buckets refill
continuously, so an address that stops guessing is forgiven. The credential is always checked
first and only a wrong one reaches the throttle, so a right password is never refused, whoever
else is guessing.

The per-address table is bounded: the least recently charged address goes first (its bucket is
the fullest; the global bucket still limits whoever rotates addresses to get fresh ones).
With several workers or instances each keeps its own buckets, so each takes 1/fleet size of the
figures, as the traffic limits do.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from keygate.config.settings import Settings

MAX_TRACKED_ADDRESSES = 10_000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address | None:
    """An address as proxies and servers write it (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def bucket_name(addr: Address) -> str:
    """IPv4 per address; IPv6 per /64, which anyone who has one address can rotate within."""
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class FailureThrottle:
    """`failed(scope)` after a wrong password: 0.0 → answer 401, else 429 with that Retry-After."""

    def __init__(
        self,
        per_address_per_min: float,
        global_per_min: float,
        trusted_proxies: Sequence[str] = (),
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address_cap = float(per_address_per_min)
        self.global_cap = float(global_per_min)
        self.trusted: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        ]
        self.max_addresses = max_addresses
        self.clock = clock
        self._addresses: OrderedDict[str, list[float]] = OrderedDict()  # name -> [tokens, stamp]
        self._global = [self.global_cap, clock()]

    @classmethod
    def from_settings(cls, settings: Settings) -> FailureThrottle:
        share = max(1, settings.fleet_size)
        return cls(
            _share(settings.auth_failures_per_min, share),
            _share(settings.auth_failures_global_per_min, share),
            settings.trusted_proxies,
        )

    def __len__(self) -> int:
        return len(self._addresses)

    # --- who is asking --------------------------------------------------------------------------
    def client_address(self, scope: dict[str, Any]) -> str:
        """The address to charge: the peer, or, when the peer is a trusted proxy, the right-most
        `X-Forwarded-For` hop that is not itself trusted (everything left of it is whatever the
        client chose to write)."""
        client = scope.get("client")
        if not client:
            return "?"
        host = str(client[0])
        if not self.trusted and ":" not in host:
            return host  # the common case: an IPv4 peer, as the server wrote it
        peer = parse_address(host)
        if peer is None:
            return host
        if not self._is_trusted(peer):
            return bucket_name(peer)
        hops: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                hops.extend(value.decode("latin-1").split(","))
        nearest = peer
        for hop in reversed(hops):
            addr = parse_address(hop)
            if addr is None:
                break  # junk where a trusted proxy writes an address: stop at the last good one
            nearest = addr
            if not self._is_trusted(addr):
                break
        return bucket_name(nearest)

    def _is_trusted(self, addr: Address) -> bool:
        return any(addr in net for net in self.trusted)

    # --- the buckets ----------------------------------------------------------------------------
    def failed(self, scope: dict[str, Any]) -> tuple[str, float]:
        """Charge a wrong password from this request's client: (its address, seconds to wait)."""
        address = self.client_address(scope)
        return address, self.fail(address)

    def fail(self, address: str) -> float:
        """Charge one failure to `address` and to the global bucket: 0.0 when both had room,
        else the seconds until both will (nothing is charged then)."""
        now = self.clock()
        wait = 0.0
        entry: list[float] | None = None
        if self.address_cap > 0:
            entry = self._addresses.get(address)
            if entry is None:
                entry = [self.address_cap, now]
            else:
                self._addresses.move_to_end(address)
            wait = _take_wait(entry, now, self.address_cap)
        if self.global_cap > 0:
            wait = max(wait, _take_wait(self._global, now, self.global_cap))
        if wait > 0:
            return wait
        if entry is not None:
            entry[0] -= 1
            if address not in self._addresses:
                self._addresses[address] = entry
                while len(self._addresses) > self.max_addresses:
                    self._addresses.popitem(last=False)
        if self.global_cap > 0:
            self._global[0] -= 1
        return 0.0


def _share(per_min: int, share: int) -> float:
    return 0.0 if per_min <= 0 else max(1.0, per_min / share)


def _take_wait(bucket: list[float], now: float, per_min: float) -> float:
    """Refill `bucket` ([tokens, stamp]; capacity and rate both `per_min`) up to now; the seconds
    until it holds one token (0.0 if it does)."""
    rate = per_min / 60.0
    tokens = min(per_min, bucket[0] + max(0.0, now - bucket[1]) * rate)
    bucket[0], bucket[1] = tokens, now
    return 0.0 if tokens >= 1 else (1 - tokens) / rate
