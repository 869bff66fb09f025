"""The store core: the one `Store` the rest of keygate talks to, holding a database driver.

`Store` is the interface (every operation the gateway, the admin API and the CLI call) and the
composition root: it holds a `Driver` (`store.sqlite`, `store.postgres`: connection, sessions,
dialect) and the state the jobs share (`store.state`: the cipher in force, the knobs). Each
operation is written once, in the module of its job:

- `store.keys` and `store.imports`: provider keys, their health, batch imports;
- `store.stats`: counters per key, per provider and per quota day;
- `store.settings`: provider overrides, meta, the model table, revoked admin sessions;
- `store.clients`: client keys and their usage;
- `store.feed`: the change feed other instances poll;
- `store.schema` and `store.encryption`: what opening a database means.

The same `Store`, on either driver, passes the same tests (`tests/store`).
"""

from __future__ import annotations

from typing import Any

from keygate.store import clients, encryption, feed, imports, keys, settings, stats
from keygate.store.clients import ClientDelta, ClientRecord
from keygate.store.driver import Db, Driver
from keygate.store.records import Changes, ImportResult, KeyRecord
from keygate.store.schema import load_migrations, migrate
from keygate.store.state import State


class Store:
    """Persistent state shared by the server, the CLI and other instances on the same database."""

    def __init__(self, driver: Driver, secret_key: str = "") -> None:
        self._state = State(driver, secret_key)

    def __repr__(self) -> str:
        return f"Store({self._state.driver.where!r})"

    @property
    def driver(self) -> Driver:
        """The database backend this store holds."""
        return self._state.driver

    @property
    def tombstone_ttl_s(self) -> float:
        """How long deletions stay in the change feed; a reader that has not polled for that
        long reloads everything."""
        return self._state.tombstone_ttl_s

    @tombstone_ttl_s.setter
    def tombstone_ttl_s(self, value: float) -> None:
        self._state.tombstone_ttl_s = value

    # the connection's life

    async def open(self) -> None:
        """Create the database if needed, apply migrations, check the encryption key."""
        state = self._state
        migrations = load_migrations(state.driver.dialect.name)

        async def setup(db: Db) -> None:
            await migrate(state.driver, db, migrations)
            await encryption.setup_cipher(state, db)

        await state.driver.open(setup)

    async def close(self) -> None:
        """Release the connection; safe to call twice."""
        await self._state.driver.close()

    # keys

    async def add_key(
        self, provider: str, secret: str, label: str = "", source: str = "api"
    ) -> KeyRecord:
        """Store one key; raises DuplicateKey (same provider + secret) or InvalidKey."""
        return await keys.add_key(self._state, provider, secret, label, source)

    async def add_keys(
        self, provider: str, secrets: list[str], source: str = "api"
    ) -> list[ImportResult]:
        """Import many keys in one transaction; one result per input token, in order."""
        return await imports.add_keys(self._state, provider, secrets, source)

    async def load_keys(self, provider: str | None = None) -> list[KeyRecord]:
        """Every key with its secret and counters, oldest first (start-up)."""
        return await keys.load_keys(self._state, provider)

    async def get_keys(self, ids: list[int]) -> list[KeyRecord]:
        """The keys that still exist among `ids`, in id order."""
        return await keys.get_keys(self._state, ids)

    async def list_keys(
        self,
        provider: str | None = None,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[KeyRecord], int]:
        """One page, newest first, and the total under the same filters (admin list)."""
        return await keys.list_keys(self._state, provider, status, q, limit, offset)

    async def update_key(self, key_id: int, **fields: Any) -> KeyRecord | None:
        """Change label/status/until/last_error and the per-key limits (rpm, rph, rpd, tpm,
        tph, tpd, max_conn); None if the key is gone."""
        return await keys.update_key(self._state, key_id, fields)

    async def delete_key(self, key_id: int) -> bool:
        """Delete a key and its counters; False if there was no such key."""
        return await keys.delete_key(self._state, key_id)

    async def save_health(self, updates: list[tuple[int, str, float, str]]) -> None:
        """Batched (id, status, until, last_error) from the flusher; shows in the change feed."""
        await keys.save_health(self._state, updates)

    # counters

    async def add_counters(
        self,
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
    ) -> None:
        """Add counter deltas (never overwrite) so several instances' flushes add up.

        key tuple: (id, use_count, ok, err_4xx, err_5xx, tokens_in, tokens_out, last_used),
        last_used is max(old, new); provider tuple: (requests, ok, err_4xx, err_5xx, tokens_in,
        tokens_out).
        """
        await stats.add_counters(self._state, key_deltas, provider_deltas)

    async def add_day_counters(self, rows: list[tuple[int, float, int, int]]) -> None:
        """(key id, quota day start, requests, tokens) spent since the last flush: added to
        the same day's counters, replacing an older day's (several instances add up)."""
        await stats.add_day_counters(self._state, rows)

    async def add_flush(
        self,
        writer: str,
        batch: int,
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
        days: list[tuple[int, float, int, int]],
        client_deltas: list[ClientDelta],
    ) -> None:
        """One flush's counters (as `add_counters`, `add_day_counters`, `add_client_counters`)
        in one transaction, marked `batch` of `writer` (a name unique to the flushing process),
        so `flush_stored` can tell afterwards whether a batch that failed was committed."""
        await stats.add_flush(
            self._state, writer, batch, key_deltas, provider_deltas, days, client_deltas
        )

    async def flush_stored(self, writer: str, batch: int) -> bool:
        """Whether `writer`'s last committed flush is `batch`."""
        return await stats.flush_stored(self._state, writer, batch)

    async def provider_totals(self) -> dict[str, dict[str, int]]:
        """{provider: {requests, ok, err_4xx, err_5xx, tokens_in, tokens_out}}."""
        return await stats.provider_totals(self._state)

    async def key_counts(self) -> dict[str, dict[str, int]]:
        """{provider: {status: n}} for the dashboard and the banner."""
        return await stats.key_counts(self._state)

    # provider overrides and meta

    async def get_provider_overrides(self) -> dict[str, dict[str, Any]]:
        """Run-time provider settings that win over config and env."""
        return await settings.get_provider_overrides(self._state)

    async def set_provider_override(self, name: str, fields: dict[str, Any]) -> None:
        """Merge `fields` into the stored override; a None value removes that field."""
        await settings.set_provider_override(self._state, name, fields)

    async def get_meta(self, name: str) -> str | None:
        """A small named value (admin token, default model, ...)."""
        return await settings.get_meta(self._state, name)

    async def set_meta(self, name: str, value: str) -> None:
        """Set a small named value; shows in the change feed as providers_changed."""
        await settings.set_meta(self._state, name, value)

    # the model table

    async def get_model_routes(self) -> dict[str, Any]:
        """Aliases and groups set at run time: name → entry as JSON (None hides a config one)."""
        return await settings.get_model_routes(self._state)

    async def set_model_route(self, name: str, spec: Any) -> None:
        """Store one entry (checked by `routing` before); shows in the feed as models_changed."""
        await settings.set_model_route(self._state, name, spec)

    async def delete_model_route(self, name: str) -> bool:
        """Forget one stored entry; False when there was none."""
        return await settings.delete_model_route(self._state, name)

    # admin sessions

    async def revoke_session(self, session_id: str, expires_at: float) -> None:
        """Refuse this admin session from now on, on every instance of this store, until
        `expires_at` (epoch s, when it would have expired anyway); prunes expired revocations."""
        await settings.revoke_session(self._state, session_id, expires_at)

    async def session_revoked(self, session_id: str) -> bool:
        """True when `session_id` was revoked and the revocation has not expired."""
        return await settings.session_revoked(self._state, session_id)

    # change feed

    async def changes_since(self, seq: int) -> Changes:
        """What other writers (CLI, other instances) changed after `seq`."""
        return await feed.changes_since(self._state, seq)

    async def current_seq(self) -> int:
        """The feed position now; pass it to changes_since later."""
        return await feed.current_seq(self._state)

    # client keys (SPEC §13)

    async def add_client(self, key_hash: str, masked: str, doc: dict[str, Any]) -> ClientRecord:
        """A new client from checked fields (`keygate.store.client_fields`); raises ValueError."""
        return await clients.add_client(self._state, key_hash, masked, doc)

    async def load_clients(self) -> list[ClientRecord]:
        """Every client that is not deleted, oldest first."""
        return await clients.load_clients(self._state)

    async def get_client(self, client_id: int) -> ClientRecord | None:
        """One client; None when there is none (or it was deleted)."""
        return await clients.get_client(self._state, client_id)

    async def update_client(self, client_id: int, doc: dict[str, Any]) -> ClientRecord | None:
        """Change the fields in `doc` (checked like `add_client`); None if the client is gone."""
        return await clients.update_client(self._state, client_id, doc)

    async def delete_client(self, client_id: int) -> bool:
        """Mark a client deleted; False if there was no such client."""
        return await clients.delete_client(self._state, client_id)

    async def add_client_counters(self, deltas: list[ClientDelta]) -> None:
        """Additive usage deltas per (client, period)."""
        await clients.add_client_counters(self._state, deltas)

    async def client_usage(self, periods: list[str]) -> dict[int, dict[str, dict[str, Any]]]:
        """{client id: {period: {requests, tokens_in, tokens_out, errors, last_used}}}."""
        return await clients.client_usage(self._state, periods)
