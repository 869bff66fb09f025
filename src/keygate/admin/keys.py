"""/api/keys: add, import, list, change, delete and test pool keys (docs/admin-api.md).

The operations themselves are keyops' (shared with the CLI); here they get their HTTP shape.
Secrets only ever come in: every answer shows keys masked, error messages included.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from keygate.admin.components import DELETED_ID, IMPORT_RESULT, KEY, TEST_RESULT
from keygate.admin.http import ApiError, Reply, Request, bad, not_found
from keygate.admin.schema import (
    INT,
    STR,
    Choice,
    Field,
    Param,
    ProviderName,
    Query,
    QueryInt,
    Text,
    Whole,
    arr,
    fields_schema,
    ints,
    obj,
)
from keygate.admin.table import op
from keygate.config.settings import BOUNDS
from keygate.control.keypool import KeyEntry
from keygate.control.quota import WINDOWS
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway
from keygate.runtime.keyops import Duplicate, KeyOps
from keygate.runtime.provider import ProviderRuntime
from keygate.runtime.views import key_view, load_quota_views
from keygate.store.base import (
    KEY_STATUSES,
    MAX_SECRET_LEN,
    MIN_SECRET_LEN,
    TIER_MAX,
    WEIGHT_MAX,
    InvalidKey,
    KeyRecord,
    parse_key_input,
)

BATCH_BODY_LIMIT = 8 << 20  # a batch import of 100,000 keys fits
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
LIST_OFFSET_MAX = 10_000_000  # far past any real key count; SQL needs a 64-bit integer
# Per-key limits share the bounds of their provider-wide defaults (key_rpm, key_max_conn).
KEY_LIMIT_MAX = {w: int(BOUNDS["key_" + w]) for w in (*WINDOWS, "max_conn")}
PROVIDER_TEST_MAX = 200  # keys tested by one POST /api/providers/{name}/test
PROVIDER_TEST_PARALLEL = 10
LABEL_MAX = 200
_TAG = "keys"
KEY_ID = Param("id", r"\d{1,18}", {"type": "integer", "minimum": 1}, "key id")
LIST_LIMIT = QueryInt(
    "limit",
    LIST_LIMIT_DEFAULT,
    f"page size; more than {LIST_LIMIT_MAX} is served as {LIST_LIMIT_MAX}",
    served_max=LIST_LIMIT_MAX,
)
LIST_OFFSET = QueryInt("offset", 0, "skip this many", high=LIST_OFFSET_MAX)
LABEL = Text(LABEL_MAX, nullable=True)
# What PATCH /api/keys/{id} may change: the handler checks each field with these.
KEY_PATCH: dict[str, Field] = {
    "label": LABEL,
    "status": Choice(("active", "disabled")),
    **{name: Whole(high) for name, high in KEY_LIMIT_MAX.items()},
    "tier": Whole(TIER_MAX),
    "weight": Whole(WEIGHT_MAX, 1),
}
# What the store accepts as a key (store.base.check_secret): printable, no whitespace.
SECRET = {
    "type": "string",
    "writeOnly": True,
    "minLength": MIN_SECRET_LEN,
    "maxLength": MAX_SECRET_LEN,
    "pattern": "^[!-~]+$",
}


class KeyRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.ops = KeyOps(gateway.store, gateway)

    def _view(self, key: KeyEntry | KeyRecord, now: float) -> dict[str, Any]:
        rt = self.gw.providers.get(key.provider)
        view = key_view(key, now, rt.pool if rt is not None else None)
        egress = rt.egress if rt is not None else None
        view["proxy"] = egress.assigned(key.id, key.secret) if egress is not None else "direct"
        return view

    async def _record(self, key_id: int) -> KeyRecord:
        rec = await self.ops.record(key_id)
        if rec is None:
            raise not_found(f"no key with id {key_id}")
        return rec

    def _provider_field(self, doc: dict[str, Any]) -> str:
        provider = doc.get("provider")
        if not isinstance(provider, str) or not provider:
            raise bad("provider", "required")
        if provider not in self.gw.providers:
            raise bad("provider", f"no provider named {provider!r}")
        return provider

    @op(
        "GET",
        "/api/keys",
        "List keys, newest first, with filter, search and pagination",
        tag=_TAG,
        answer=obj(
            {"keys": arr(KEY), "total": {**INT, "description": "matches under the filters"}}
        ),
        answer_text="one page",
        params=(
            Query("provider", STR, "only this provider"),
            Query(
                "status",
                {"type": "string", "enum": [*KEY_STATUSES, ""]},
                "only keys in this state; empty: any",
            ),
            Query("q", STR, "matches the label or the masked form"),
            LIST_LIMIT,
            LIST_OFFSET,
        ),
        errors=(400,),
    )
    async def list_keys(self, req: Request) -> Reply:
        q = req.query
        provider = q.get("provider") or None
        status = q.get("status") or None
        search = (q.get("q") or "").strip() or None
        limit = LIST_LIMIT.read(q)
        offset = LIST_OFFSET.read(q)
        if status is not None and status not in KEY_STATUSES:
            raise bad("status", f"must be one of {', '.join(KEY_STATUSES)}")
        now = time.time()
        page, total = await self.ops.list(provider, status, search, limit, offset, now)
        for name, rt in self.gw.providers.items():
            live = [k for k in page if isinstance(k, KeyEntry) and k.provider == name]
            if live:
                await load_quota_views(rt, live)
        return Reply(200, {"keys": [self._view(k, now) for k in page], "total": total})

    @op(
        "POST",
        "/api/keys",
        "Add one key; usable by the very next proxied request",
        tag=_TAG,
        status=201,
        answer=obj({"id": INT, "key": KEY}),
        answer_text="added",
        body=obj(
            {"provider": ProviderName(), "key": SECRET, "label": LABEL.schema},
            required=["provider", "key"],
        ),
        errors=(409,),
    )
    async def add_key(self, req: Request) -> Reply:
        doc = await req.json()
        provider = self._provider_field(doc)
        secret = doc.get("key")
        if not isinstance(secret, str) or not secret.strip():
            raise bad("key", "required (a non-empty string)")
        label = LABEL.check("label", doc.get("label", ""))
        try:
            key = await self.ops.add(provider, secret, label, "api")
        except Duplicate as dup:
            where = f" (id {dup.existing})" if dup.existing is not None else ""
            raise ApiError(
                409,
                f"key: {provider} already has this key {dup.masked}{where}",
                "duplicate_key",
                param="key",
            ) from None
        except InvalidKey as exc:
            raise bad("key", str(exc)) from None
        log.info("admin: added %s key %s#%d", provider, key.masked, key.id)
        return Reply(201, {"id": key.id, "key": self._view(key, time.time())})

    @op(
        "POST",
        "/api/keys/batch",
        "Import many keys: text split on newlines, commas, whitespace, or a JSON array",
        tag=_TAG,
        answer=obj({"results": arr(IMPORT_RESULT), **ints("added", "duplicate", "invalid")}),
        answer_text="one result per token, in input order",
        body=obj(
            {
                "provider": ProviderName(),
                "input": {"oneOf": [STR, arr(STR)], "writeOnly": True},
            },
            required=["provider", "input"],
        ),
        limit=BATCH_BODY_LIMIT,
    )
    async def import_keys(self, req: Request) -> Reply:
        doc = await req.json()
        provider = self._provider_field(doc)
        raw = doc.get("input")
        if isinstance(raw, str):
            tokens = parse_key_input(raw)
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            tokens = [tok.strip() for tok in raw if tok.strip()]
        else:
            raise bad("input", "must be text or an array of strings")
        done = await self.ops.import_(provider, tokens, "api")
        counts = done.counts
        log.info(
            "admin: imported %s keys: %d added, %d duplicate, %d invalid",
            provider,
            counts["added"],
            counts["duplicate"],
            counts["invalid"],
        )
        results = [
            {"input": r.input, "status": r.status, "id": r.id, "message": r.message}
            for r in done.results
        ]
        return Reply(200, {"results": results, **counts})

    @op(
        "PATCH",
        "/api/keys/{id}",
        "Enable, disable, label, limit or rank (tier, weight) a key; applies at once",
        tag=_TAG,
        answer=KEY,
        answer_text="the key after the change",
        body=fields_schema(
            KEY_PATCH,
            closed=True,
            description="an empty body changes nothing and returns the key",
        ),
        body_required=False,
        params=(KEY_ID,),
        errors=(404,),
    )
    async def patch_key(self, req: Request, key_id_s: str) -> Reply:
        key_id = int(key_id_s)
        doc = await req.json()
        fields: dict[str, Any] = {}
        for name, value in doc.items():
            field = KEY_PATCH.get(name)
            if field is None:
                raise bad(name, f"unknown field ({', '.join(KEY_PATCH)})")
            fields[name] = field.check(name, value)
        rec = await self._record(key_id)
        entry = self.ops.entry(rec.provider, key_id)
        if "status" in fields:
            # an admin's "active" carries its moment, as a test's revive does, so that every
            # instance follows it from the change feed (`runtime.probe.proven_at`)
            fields["until"] = time.time() if fields["status"] == "active" else 0.0
        elif entry is not None:
            # Write the health memory holds along with the change, so the store (and the
            # change feed every instance follows) never carries an older state back.
            fields.update(status=entry.status, until=entry.until, last_error=entry.last_error)
        if fields:
            try:
                updated = await self.gw.store.update_key(key_id, **fields)
            except ValueError as exc:
                raise ApiError(400, str(exc), "invalid_value") from None
            if updated is None:
                raise not_found(f"no key with id {key_id}")
            rec = updated
            log.info("admin: key %s#%d changed: %s", rec.masked, key_id, ", ".join(sorted(doc)))
        now = time.time()
        # Applies label and per-key limits in place and tells the other instances at once.
        entry = self.gw.adopt_key(rec)
        if entry is not None and "status" in doc:
            self.gw.providers[rec.provider].pool.set_status(key_id, doc["status"], rec.until)
        return Reply(200, self._view(entry or rec, now))

    @op(
        "DELETE",
        "/api/keys/{id}",
        "Delete a key; it is never used again from this moment",
        tag=_TAG,
        answer=DELETED_ID,
        answer_text="deleted",
        params=(KEY_ID,),
        errors=(404,),
    )
    async def delete_key(self, req: Request, key_id_s: str) -> Reply:
        key_id = int(key_id_s)
        if not await self.ops.delete(key_id):
            raise not_found(f"no key with id {key_id}")
        log.info("admin: deleted key #%d", key_id)
        return Reply(200, {"deleted": key_id})

    @op(
        "POST",
        "/api/keys/{id}/test",
        "Test a key against its upstream; a pass revives it, a 401/403 marks it invalid",
        tag=_TAG,
        answer=TEST_RESULT,
        answer_text="the outcome",
        params=(KEY_ID,),
        errors=(400, 404),
    )
    async def test_key(self, req: Request, key_id_s: str) -> Reply:
        key_id = int(key_id_s)
        entry = self.gw.find_key(key_id)
        if entry is None:
            rec = await self._record(key_id)
            entry = self.gw.adopt_key(rec)
            if entry is None:
                raise ApiError(
                    400, f"provider {rec.provider!r} is not configured here", "unknown_provider"
                )
        return Reply(200, await self.test_entry(self.gw.providers[entry.provider], entry))

    async def test_entries(self, rt: ProviderRuntime) -> list[dict[str, Any]]:
        """Every usable key of a provider (up to PROVIDER_TEST_MAX), a few at a time."""
        entries = [e for e in rt.pool.entries.values() if e.status != "disabled"]
        gate = asyncio.Semaphore(PROVIDER_TEST_PARALLEL)

        async def one(entry: KeyEntry) -> dict[str, Any]:
            async with gate:
                return await self.test_entry(rt, entry)

        return list(await asyncio.gather(*(one(e) for e in entries[:PROVIDER_TEST_MAX])))

    async def test_entry(self, rt: ProviderRuntime, entry: KeyEntry) -> dict[str, Any]:
        """The same operation as `keygate keys test`, applied at once to this gateway's pool."""
        result = await self.ops.test(self.gw.key_session(rt, entry), rt.cfg, entry)
        if result.health is not None:
            log.info(
                "admin: key %s#%d tested %s: now %s",
                entry.masked,
                entry.id,
                result.status,
                result.health[0],
            )
        if result.save_error:
            log.warning("key #%d: could not save its test result: %s", entry.id, result.save_error)
        return {
            "id": entry.id,
            "ok": result.ok,
            "status": result.status,
            "latency_ms": round(result.latency_ms, 1),
            "error": result.error or None,
            "key": self._view(entry, time.time()),
        }
