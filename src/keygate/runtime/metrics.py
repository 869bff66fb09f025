"""Prometheus metrics, read from the gateway's own counters when scraped.

Nothing is added to the request path: a custom collector turns the per-provider counters, key
states and admission snapshots that already exist into metric families at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from keygate.runtime.cache import RESULTS as CACHE_RESULTS
from keygate.runtime.gateway import Gateway

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class GatewayCollector:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        requests = CounterMetricFamily(
            "keygate_requests",
            "Proxied requests since start, by provider and outcome class.",
            labels=["provider", "outcome"],
        )
        tokens = CounterMetricFamily(
            "keygate_tokens",
            "Tokens the upstreams reported, by provider and direction.",
            labels=["provider", "direction"],
        )
        keys = GaugeMetricFamily("keygate_keys", "Keys by state.", labels=["provider", "state"])
        in_flight = GaugeMetricFamily(
            "keygate_in_flight", "Requests holding a slot.", labels=["provider"]
        )
        max_conn = GaugeMetricFamily(
            "keygate_max_conn", "Slot limit (0 = none).", labels=["provider"]
        )
        queued = GaugeMetricFamily("keygate_queued", "Requests waiting.", labels=["provider"])
        rejected = CounterMetricFamily(
            "keygate_rejected", "Requests refused by admission.", labels=["provider"]
        )
        remaining = GaugeMetricFamily(
            "keygate_key_quota_remaining",
            "What a key has left in each quota window with a limit (configured or announced).",
            labels=["provider", "key", "window"],
        )
        affinity = CounterMetricFamily(
            "keygate_affinity",
            "Answers by what their pick made of the conversation's pin (hit, new, moved).",
            labels=["provider", "result"],
        )
        now = time.time()
        for name, rt in gw.providers.items():
            _quota_gauges(remaining, name, rt, now)
            stats = rt.stats
            if not rt.pool.entries and not stats.requests:
                continue
            requests.add_metric([name, "ok"], stats.ok)
            requests.add_metric([name, "4xx"], stats.err_4xx)
            requests.add_metric([name, "5xx"], stats.err_5xx)
            tokens.add_metric([name, "in"], stats.tokens_in)
            tokens.add_metric([name, "out"], stats.tokens_out)
            if any(stats.affinity.values()):
                for result, n in stats.affinity.items():
                    affinity.add_metric([name, result], n)
            for state, n in rt.pool.counts().items():
                keys.add_metric([name, state], n)
            snap: dict[str, Any] = rt.admission.snapshot()
            in_flight.add_metric([name], snap.get("in_flight", 0))
            max_conn.add_metric([name], snap.get("max_conn", 0))
            queued.add_metric([name], snap.get("queued", 0))
            rejected.add_metric([name], snap.get("rejected", 0))
        by_client = [
            CounterMetricFamily(
                f"keygate_client_{what}",
                f"Client-key {what} served by this instance since start (SPEC §13).",
                labels=["client"],
            )
            for what in ("requests", "errors")
        ]
        client_tokens = CounterMetricFamily(
            "keygate_client_tokens",
            "Tokens the upstreams reported for a client key's requests, by direction.",
            labels=["client", "direction"],
        )
        for client in list(gw.clients.by_id.values()):
            n = client.usage.since_start
            if n[0]:
                by_client[0].add_metric([client.name], n[0])
                by_client[1].add_metric([client.name], n[3])
                client_tokens.add_metric([client.name, "in"], n[1])
                client_tokens.add_metric([client.name, "out"], n[2])
        yield from (*by_client, client_tokens)
        state = GaugeMetricFamily(
            "keygate_shared_state",
            "1 for the form of traffic-control state in use (local, redis, local-fallback).",
            labels=["state"],
        )
        state.add_metric([gw.state_info()["state"]], 1)
        yield from (requests, tokens, keys, in_flight, max_conn, queued, rejected, state, affinity)
        yield remaining
        proxy_errors = CounterMetricFamily(
            "keygate_proxy_errors",
            "Failures of each egress proxy, its password masked (SPEC §16).",
            labels=["provider", "proxy"],
        )
        for name, rt in gw.providers.items():
            for proxy in rt.egress.states if rt.egress is not None else ():
                proxy_errors.add_metric([name, proxy.shown], proxy.errors)
        yield proxy_errors
        cache = CounterMetricFamily(
            "keygate_cache",
            "Answers of cached routes by what the response cache made of them (SPEC §19).",
            labels=["provider", "result"],
        )
        for name, counts in list(gw.cache.counts.items()):
            for result, n in zip(CACHE_RESULTS, counts, strict=False):
                cache.add_metric([name, result], n)
        yield cache


def _quota_gauges(family: GaugeMetricFamily, name: str, rt: Any, now: float) -> None:
    """One sample per key and limited window; keys without quota windows add nothing."""
    pool = rt.pool
    for entry in list(pool.entries.values()):
        if entry.quota is None:
            continue
        for window, row in pool.quota_view(entry, now).items():
            limit, used = row["limit"], row["used"]
            if limit is not None:
                family.add_metric([name, str(entry.id), window], max(0, limit - (used or 0)))


def registry_for(gateway: Gateway) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
