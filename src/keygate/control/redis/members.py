"""What the shared state needs of the admissions and key pools registered with it: their
leases, to hand back, renew or re-lease after an outage, and the fleet's events about keys."""

from __future__ import annotations

from typing import Any, Protocol


class SharedGate(Protocol):
    """What the supervisor needs of a provider's shared admission (admission.py registers
    itself here): its leases, to hand back, re-lease or wake after an outage."""

    name: str
    leases_key: str
    held: dict[str, Any]

    def lease_local_slots(self) -> None: ...

    def wake(self) -> None: ...

    def on_pause(self, until: float) -> None: ...


class SharedPool(Protocol):
    """What the supervisor needs of a provider's shared key pool (keypool.py registers it):
    its per-key connection leases, to renew, and the fleet's events about its keys."""

    leases: dict[int, list[str]]

    def conn_key(self, key_id: int) -> str: ...

    async def resync(self) -> None: ...

    def on_health(self, msg: dict[str, Any]) -> None: ...

    def on_guard(self, msg: dict[str, Any]) -> None: ...

    def note_429(self) -> None: ...
