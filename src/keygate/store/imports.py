"""Batch imports: many keys checked, sealed and added in one transaction, one result each.

The plan is made before the database is touched (every token checked, repeats in the input
pointed at their first copy, the valid ones sealed — off the event loop for big batches); the
transaction then takes the feed seq first, so its duplicate check cannot go stale, and inserts
only what the database does not hold yet. An import that adds nothing rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from keygate.masking import mask
from keygate.store import feed
from keygate.store.checks import check_provider, check_source
from keygate.store.driver import Db, NewKeyRow, Rollback
from keygate.store.encryption import guard_plain_writes
from keygate.store.keyinput import check_secret
from keygate.store.keys import BIG_RESULT
from keygate.store.records import ImportResult
from keygate.store.state import State


@dataclass(slots=True)
class ImportPlan:
    """A batch import before it meets the database: one result per input token, and the
    distinct valid keys by fingerprint (a repeat in the input points at its first copy)."""

    results: list[ImportResult]
    first: dict[str, int]  # fingerprint -> index of its first occurrence
    repeats: list[tuple[int, str]]  # (index, fingerprint) of later occurrences
    tokens: dict[str, str]  # fingerprint -> the key, first occurrences only

    def finish(self, ids: dict[str, int]) -> list[ImportResult]:
        """Fill in ids once the database said which fingerprints it holds (`ids`)."""
        for fp, index in self.first.items():
            self.results[index].id = ids.get(fp)
        for index, fp in self.repeats:
            self.results[index].id = ids.get(fp)
            self.results[index].message = "repeated in this input"
        return self.results


def plan_import(secrets: Sequence[Any], fingerprint: Callable[[str], str]) -> ImportPlan:
    """Check every token; every valid one starts as "duplicate" until the insert proves it new."""
    plan = ImportPlan([], {}, [], {})
    for i, raw in enumerate(secrets):
        token = raw.strip() if isinstance(raw, str) else ""
        why = check_secret(token)
        if why:
            plan.results.append(ImportResult(mask(token), "invalid", message=why))
            continue
        fp = fingerprint(token)
        plan.results.append(ImportResult(mask(token), "duplicate"))
        if fp in plan.first:
            plan.repeats.append((i, fp))
        else:
            plan.first[fp] = i
            plan.tokens[fp] = token
    return plan


async def add_keys(
    state: State, provider: str, secrets: list[str], source: str = "api"
) -> list[ImportResult]:
    provider = check_provider(provider)
    check_source(source)
    secrets = list(secrets)
    cipher = state.cipher
    driver = state.driver

    def prepare() -> tuple[ImportPlan, list[str]]:
        plan = plan_import(secrets, cipher.fingerprint)
        return plan, [cipher.seal(token) for token in plan.tokens.values()]  # `first` order

    if len(secrets) > BIG_RESULT:  # hashing/encrypting many keys: keep the event loop free
        plan, sealed = await driver.offload(prepare)
    else:
        plan, sealed = prepare()
    results, first = plan.results, plan.first
    masked = [results[index].input for index in first.values()]

    async def tx(db: Db) -> dict[str, int]:
        seq = await feed.bump(db)  # taken first: the duplicate check cannot go stale
        await guard_plain_writes(state, db)
        fps = list(first)
        ids = await driver.find_fingerprints(db, provider, fps)
        for fp in ids:
            results[first[fp]].message = "already stored"
        keep = [i for i, fp in enumerate(fps) if fp not in ids]
        if not keep:
            raise Rollback(ids)  # nothing new: the feed does not move
        new_fps = [fps[i] for i in keep]
        rows: list[NewKeyRow] = [(sealed[i], fps[i], masked[i]) for i in keep]
        for fp, key_id in await driver.insert_keys(db, provider, source, seq, rows):
            ids[fp] = key_id
            result = results[first[fp]]
            result.status, result.message = "added", ""
        missing = [fp for fp in new_fps if fp not in ids]
        if missing:  # only if a writer bypassed the feed lock
            for fp, key_id in (await driver.find_fingerprints(db, provider, missing)).items():
                ids[fp] = key_id
                results[first[fp]].message = "already stored"
        return ids

    ids = await driver.write(tx) if first else {}
    await driver.after_import(sum(1 for r in results if r.status == "added"))
    return plan.finish(ids)
