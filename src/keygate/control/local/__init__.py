"""The in-process form of traffic control: limits and key health in this process's memory."""

from keygate.control.local.bucket import TokenBucket
from keygate.control.local.gate import LocalAdmission, LocalSlot
from keygate.control.local.keypool import LocalKeyPool

__all__ = ["LocalAdmission", "LocalKeyPool", "LocalSlot", "TokenBucket"]
