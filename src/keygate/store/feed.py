"""The change feed: how every writer tells every reader (other instances, the CLI) what moved.

One seq per writing transaction, taken first (`bump`) and stamped on the rows it touches, so
writers queue on the feed row and seq order is commit order; tombstones for deleted keys,
pruned after a while (a reader older than that reloads everything); the model table has its
own mark. A write that changes nothing rolls back, so the feed does not move.
"""

from __future__ import annotations

import time

from keygate.store.driver import Db, one
from keygate.store.records import Changes
from keygate.store.state import State


async def bump(db: Db) -> int:
    """Next change-feed seq; first statement of every feed-moving write, so writers queue on
    the feed row and seq order is commit order."""
    return int(await db.fetchval("UPDATE change_feed SET seq = seq + 1 WHERE id = 1 RETURNING seq"))


async def models_moved(db: Db, seq: int) -> None:
    """Mark the model table changed at `seq` (after a `bump` in the same transaction)."""
    await db.execute("UPDATE change_feed SET models_seq = $1 WHERE id = 1", seq)


async def tombstone(state: State, db: Db, key_id: int, seq: int) -> None:
    """Record a key's deletion at `seq`; prune tombstones older than the TTL and move the
    feed's horizon past them, so a reader from before it asks for a full reload."""
    now = time.time()
    await db.execute(
        "INSERT INTO deleted_keys (key_id, seq, deleted_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (key_id) DO UPDATE SET seq = EXCLUDED.seq,"
        " deleted_at = EXCLUDED.deleted_at",
        key_id,
        seq,
        now,
    )
    pruned = await db.fetch(
        "DELETE FROM deleted_keys WHERE deleted_at < $1 RETURNING seq",
        now - state.tombstone_ttl_s,
    )
    if pruned:
        await db.execute(
            f"UPDATE change_feed SET pruned_seq = {state.driver.dialect.greatest}(pruned_seq, $1)"
            " WHERE id = 1",
            max(int(r[0]) for r in pruned),
        )


async def changes_since(state: State, seq: int) -> Changes:
    seq = int(seq)

    async def read(db: Db) -> Changes:
        current, pruned, models_seq = one(
            await db.fetchrow("SELECT seq, pruned_seq, models_seq FROM change_feed WHERE id = 1"),
            "change feed",
        )
        if seq < pruned or seq > current:
            # Deletions before `pruned` are forgotten, or this is another database: hand back
            # every key and ask for a full reload.
            ids = [r[0] for r in await db.fetch("SELECT id FROM keys ORDER BY id")]
            return Changes(
                current, ids, [], True, full=True, models_changed=True, clients_changed=True
            )
        # Sorted here, not by ORDER BY id: with that, a planner that knows most keys share
        # one seq walks the whole table in id order instead of the updated_seq index.
        key_ids = sorted(
            r[0] for r in await db.fetch("SELECT id FROM keys WHERE updated_seq > $1", seq)
        )
        deleted = sorted(
            r[0] for r in await db.fetch("SELECT key_id FROM deleted_keys WHERE seq > $1", seq)
        )
        providers_changed = bool(
            await db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM provider_overrides WHERE updated_seq > $1)"
                " OR EXISTS (SELECT 1 FROM meta WHERE updated_seq > $1)",
                seq,
            )
        )
        clients_changed = bool(
            await db.fetchval("SELECT EXISTS (SELECT 1 FROM clients WHERE updated_seq > $1)", seq)
        )
        return Changes(
            current,
            key_ids,
            deleted,
            providers_changed,
            models_changed=models_seq > seq,
            clients_changed=clients_changed,
        )

    return await state.driver.read(read)


async def current_seq(state: State) -> int:
    async def fn(db: Db) -> int:
        return int(await db.fetchval("SELECT seq FROM change_feed WHERE id = 1"))

    return await state.driver.plain(fn)
