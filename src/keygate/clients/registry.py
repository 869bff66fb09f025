"""The clients the request path knows: one dict by key hash, one by id, rebuilt from the store
(at start, and whenever the change feed says clients changed). Finding a client is one sha256
and one dict lookup, whatever the number of clients."""

from __future__ import annotations

import time

from keygate.clients.limits import Windows, seed
from keygate.clients.periods import PERIODS
from keygate.clients.secret import key_hash
from keygate.clients.usage import Usage
from keygate.store.clients import ClientRecord


class Client:
    """A client key's policy (limits, lists, expiry) and its live counters. Updated in place
    on a change, so requests in flight keep counting on the same object."""

    __slots__ = (
        "any_model",
        "checks_body",
        "created_at",
        "enabled",
        "expires_at",
        "id",
        "implied_providers",
        "key_hash",
        "masked",
        "model_names",
        "models",
        "monthly_tokens",
        "name",
        "pair_names",
        "plain_names",
        "provider_set",
        "providers",
        "rpd",
        "rpm",
        "star_providers",
        "token_limited",
        "tpd",
        "usage",
        "windows",
    )

    def __init__(self, rec: ClientRecord) -> None:
        self.id = rec.id
        self.usage = Usage()
        self.windows = Windows()
        self.apply(rec)

    def apply(self, rec: ClientRecord) -> None:
        self.name = rec.name
        self.key_hash = rec.key_hash
        self.masked = rec.masked
        self.enabled = rec.enabled
        self.expires_at = rec.expires_at
        self.created_at = rec.created_at
        self.rpm, self.rpd, self.tpd = rec.rpm, rec.rpd, rec.tpd
        self.monthly_tokens = rec.monthly_tokens
        self.providers = list(rec.providers)
        self.models = list(rec.models)
        self.provider_set = frozenset(rec.providers) if rec.providers else None
        self.any_model = not rec.models or "*" in rec.models
        # every name as listed (an alias or group is allowed by its own name); a name with a
        # slash is `provider/model`, one without a model's name on any provider
        self.model_names = frozenset(m for m in rec.models if not m.endswith("/*"))
        self.plain_names = frozenset(m for m in self.model_names if "/" not in m)
        self.pair_names = self.model_names - self.plain_names
        self.star_providers = frozenset(m[:-2] for m in rec.models if m.endswith("/*"))
        # the providers a model list names: where a request that names no model may go
        self.implied_providers = self.star_providers | {m.split("/", 1)[0] for m in self.pair_names}
        self.token_limited = bool(rec.tpd or rec.monthly_tokens)
        # the body is read strictly (parsed) for a client with lists or token limits
        self.checks_body = not self.any_model or self.provider_set is not None or self.token_limited

    def refusal(self, now: float) -> str:
        """Why this key may not be used now ('' when it may)."""
        if not self.enabled:
            return "this client key is disabled"
        if self.expires_at and now >= self.expires_at:
            return "this client key has expired"
        return ""

    def provider_allowed(self, provider: str) -> bool:
        return self.provider_set is None or provider in self.provider_set

    def allows(self, provider: str, model: str) -> bool:
        """Provider in its providers (if listed); the model as `provider` receives it: a
        listed plain name, `provider/model` listed, or under a listed `provider/*` — a
        pattern names a provider, so `openai/*` never matches openrouter's `openai/gpt-4o`.
        A request that names no model may go only where the lists name the provider."""
        if not self.provider_allowed(provider):
            return False
        if self.any_model:
            return True
        if not model:
            return self.provider_set is not None or provider in self.implied_providers
        return (
            provider in self.star_providers
            or model in self.plain_names
            or f"{provider}/{model}" in self.pair_names
        )


class ClientRegistry:
    def __init__(self) -> None:
        self.by_hash: dict[str, Client] = {}
        self.by_id: dict[int, Client] = {}
        self.retired: list[Client] = []  # removed with counters not yet flushed

    def __bool__(self) -> bool:
        """Whether any client key exists (then the proxy is closed without a credential)."""
        return bool(self.by_id)

    def find(self, credential: bytes) -> Client | None:
        return self.by_hash.get(key_hash(credential))

    def put(self, rec: ClientRecord, usage: dict[str, dict[str, int]] | None = None) -> Client:
        """Add or update one client; a new one starts its windows from `usage` (the store's
        rows for today and this month)."""
        client = self.by_id.get(rec.id)
        if client is None:
            client = self.by_id[rec.id] = Client(rec)
            if usage:
                now = time.time()
                p = PERIODS.at(now)
                day, month = usage.get(p.day, {}), usage.get(p.month, {})
                seed(
                    client,
                    int(day.get("requests", 0)),
                    int(day.get("tokens_in", 0)) + int(day.get("tokens_out", 0)),
                    int(month.get("tokens_in", 0)) + int(month.get("tokens_out", 0)),
                    now,
                )
        else:
            if client.key_hash != rec.key_hash:
                self.by_hash.pop(client.key_hash, None)
            client.apply(rec)
        self.by_hash[rec.key_hash] = client
        return client

    def remove(self, client_id: int) -> None:
        client = self.by_id.pop(client_id, None)
        if client is not None:
            self.by_hash.pop(client.key_hash, None)
            if client.usage.pending:
                self.retired.append(client)

    def replace(
        self, records: list[ClientRecord], usage: dict[int, dict[str, dict[str, int]]]
    ) -> None:
        """Make the table exactly `records` (the store's live clients)."""
        present = {rec.id for rec in records}
        for client_id in [i for i in self.by_id if i not in present]:
            self.remove(client_id)
        for rec in records:
            self.put(rec, usage.get(rec.id))
