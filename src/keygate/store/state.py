"""What the core's jobs share: the driver the store holds, the cipher in force, the knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from keygate.store.crypto import Cipher
from keygate.store.driver import Driver
from keygate.store.records import TOMBSTONE_TTL_S


@dataclass(slots=True)
class State:
    """One store's shared state; the job modules (keys, stats, feed, ...) take it first."""

    driver: Driver
    secret_key: str = ""  # KEYGATE_SECRET_KEY; the cipher is derived from it at open
    cipher: Cipher = field(default_factory=Cipher)  # plain until open() says otherwise
    tombstone_ttl_s: float = TOMBSTONE_TTL_S
