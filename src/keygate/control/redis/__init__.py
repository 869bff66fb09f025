"""The Redis form of traffic control: one set of limits and key health for a fleet.

`state` supervises the connection (`connection`) and the background work; `admission` and
`keypool` implement the interface of `control.base`, each holding a local form as its fallback;
`scripts` holds the Lua that makes each decision atomically in Redis.
"""

from keygate.control.redis.admission import SharedAdmission, SharedSlot
from keygate.control.redis.keypool import SharedKeyPool
from keygate.control.redis.state import SharedState

__all__ = ["SharedAdmission", "SharedKeyPool", "SharedSlot", "SharedState"]
