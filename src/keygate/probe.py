"""A cheap authenticated request (the model list) that tells whether a key works."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from keygate.providers import ANTHROPIC_VERSION
from keygate.settings import ProviderConfig


async def probe(
    session: aiohttp.ClientSession, cfg: ProviderConfig, secret: str
) -> tuple[int, float, str]:
    """(status, latency ms, error text); status 0 when the upstream could not be reached."""
    if cfg.key_style == "gemini":
        url, headers = cfg.base_url + "/v1beta/models", {"x-goog-api-key": secret}
    elif cfg.key_style == "x-api-key":
        url, headers = (
            cfg.base_url + "/v1/models",
            {"x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION},
        )
    else:
        url, headers = cfg.base_url + "/v1/models", {"authorization": "Bearer " + secret}
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_connect_s)
    try:
        async with asyncio.timeout(min(cfg.timeout_first_byte_s, 30.0)):
            async with session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                status = resp.status
    except TimeoutError:
        return 0, (time.perf_counter() - started) * 1000, "timed out"
    except (aiohttp.ClientError, OSError) as exc:
        return 0, (time.perf_counter() - started) * 1000, f"unreachable: {type(exc).__name__}"
    ms = (time.perf_counter() - started) * 1000
    return status, ms, "" if status < 400 else f"{status} from upstream"
