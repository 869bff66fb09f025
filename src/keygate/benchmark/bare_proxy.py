"""The "bare" reference: the smallest pass-through on keygate's own stack, with no gateway logic.

Raw ASGI on uvicorn (httptools, uvloop) and one pooled aiohttp session: whatever this costs is the
price of the Python stack itself, the floor keygate is measured against.

    python -m keygate.benchmark.bare_proxy --port 8001 --upstream http://127.0.0.1:8002
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import aiohttp
import uvicorn

HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
     b"upgrade", b"proxy-authorization", b"proxy-authenticate")
)  # fmt: skip
NOT_FORWARDED = HOP | {b"host", b"content-length"}  # aiohttp sets both for the upstream
UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8000").rstrip("/")
_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    assert _session is not None
    body, more = b"", True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    url = UPSTREAM + scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode("latin-1")
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k not in NOT_FORWARDED
    ]
    async with _session.request(
        scope["method"], url, data=body, headers=headers, allow_redirects=False
    ) as resp:
        out = [(k, v) for k, v in resp.raw_headers if k.lower() not in HOP]
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    global UPSTREAM
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("BARE_PORT", "8001")))
    parser.add_argument("--upstream", default=UPSTREAM)
    args = parser.parse_args()
    UPSTREAM = args.upstream.rstrip("/")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
