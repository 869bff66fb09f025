"""Encryption at rest as the store applies it: the cipher chosen at open, the switch from plain
to encrypted (every secret re-sealed in one transaction under the schema lock), and the guard
that keeps a writer opened before that switch from adding plain secrets after it.

The cipher itself (formats, key derivation, the policy) is `store.crypto`.
"""

from __future__ import annotations

from keygate.store.crypto import (
    CRYPTO_META,
    ERR_KEY_REQUIRED,
    META_VERIFIER,
    Cipher,
    resolve_cipher,
)
from keygate.store.driver import Db, ResealRow
from keygate.store.records import StoreError
from keygate.store.state import State

_CRYPTO_META_SQL = "SELECT name, value FROM meta WHERE name IN ({})".format(
    ", ".join(f"${i}" for i in range(1, len(CRYPTO_META) + 1))
)


async def guard_plain_writes(state: State, db: Db) -> None:
    """Refuse to add plain secrets after another process switched the db to encryption.

    Call after `feed.bump`: the feed lock orders this read after the switch's commit.
    """
    if not state.cipher.encrypted and await db.fetchval(
        "SELECT 1 FROM meta WHERE name = $1", META_VERIFIER
    ):
        raise StoreError(ERR_KEY_REQUIRED)


async def setup_cipher(state: State, db: Db) -> None:
    """Pick the cipher at open; switch a plain database to encryption when a passphrase is set
    (once, whichever process gets there first)."""

    async def crypto_meta() -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in await db.fetch(_CRYPTO_META_SQL, *CRYPTO_META)}

    # The key derivation costs ~50 ms of CPU: off the event loop.
    cipher, to_write = await db.offload(resolve_cipher, state.secret_key, await crypto_meta())
    if not to_write:
        state.cipher = cipher
        return
    driver = state.driver
    rewritten = 0
    async with db.exclusive():
        if driver.dialect.hold_feed:  # writers (a plain add_key elsewhere) wait for the switch
            await db.execute(driver.dialect.hold_feed)
        meta = await crypto_meta()
        if meta.get(META_VERIFIER):  # another process switched it on meanwhile
            cipher = (await db.offload(resolve_cipher, state.secret_key, meta))[0]
        else:
            rows = await db.fetch("SELECT id, secret FROM keys ORDER BY id")
            old = Cipher()

            def reseal() -> list[ResealRow]:
                out: list[ResealRow] = []
                for key_id, stored in rows:
                    secret = old.unseal(stored)
                    out.append((key_id, cipher.seal(secret), cipher.fingerprint(secret)))
                return out

            updates = await db.offload(reseal)
            if updates:
                await driver.reseal(db, updates)
            await db.executemany(
                "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, 0)"
                " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                list(to_write.items()),
            )
            rewritten = len(updates)
    state.cipher = cipher
    if rewritten:
        await driver.after_reseal(db)
