"""The Lua scripts of the Redis form, as `.lua` files next to this loader.

Each script is sent as the prelude (the clock), then the pool helpers and the quota windows for
the key-pool scripts, then its own file; its SHA1 is what EVALSHA names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.resources import files


def _text(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Script:
    name: str
    src: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.src.encode()).hexdigest())


def load(name: str, pool: bool = False) -> Script:
    parts = ["prelude", "pool", "quota", name] if pool else ["prelude", name]
    return Script(name, "\n".join(_text(p) for p in parts))


ADMIT = load("admit")
CAPACITY = load("capacity")
RELEASE_SLOT = load("release_slot")
RENEW = load("renew")
CLEAN = load("clean")
PAUSE = load("pause")
UNREGISTER = load("unregister")
PICK = load("pick", pool=True)
RELEASE_KEY = load("release_key", pool=True)
SET = load("set", pool=True)
SYNC = load("sync", pool=True)
REMOVE = load("remove", pool=True)
SEED = load("seed", pool=True)
QUOTA_VIEW = load("quota_view", pool=True)
CLIENT_CHARGE = load("client_charge")
CLIENT_SETTLE = load("client_settle")
SCRIPTS = (
    *(ADMIT, CAPACITY, RELEASE_SLOT, RENEW, CLEAN, PAUSE, UNREGISTER, PICK, RELEASE_KEY, SET),
    *(SYNC, REMOVE, SEED, QUOTA_VIEW, CLIENT_CHARGE, CLIENT_SETTLE),
)
