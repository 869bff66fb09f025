"""Egress proxies (SPEC §16): a real HTTP CONNECT/forward proxy and a real SOCKS5 proxy on
loopback, started here, carry the gateway's requests to the mock upstream; keys are spread over
a provider's proxies by rendezvous hashing; a failing proxy is the proxy's fault (retried through
another with the same key, the proxy cooled, the key untouched); bad proxy URLs are one-line
config errors, and a proxy's password is never shown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import signal
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import CHAT, eventually, free_port, wait_log
from keygate.config.provider_config import ProviderConfig
from keygate.config.proxies import check_proxy, show_proxy
from keygate.config.settings import ConfigError, load_settings
from keygate.runtime.egress import Egress, EgressSessions, ProxyState, rendezvous_rank

PASSWORD = "pr0xy-Secr3t-Zq9"  # the proxies' password: must never be shown
USER = "alice"


class LoopbackProxy:
    """A small proxy on its own thread and loop: `http` (CONNECT and absolute-form forwarding,
    407 without the right Basic login when it has one) or `socks5` (RFC 1928, with the
    username/password method of RFC 1929 when it has a login). Only ever connects to loopback;
    `targets` lists the (host, port) it connected to."""

    def __init__(self, kind: str, user: str | None = None, password: str | None = None) -> None:
        self.kind = kind
        self.user = user
        self.password = password
        self.targets: list[tuple[str, int]] = []
        self.refused = 0  # logins refused
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LoopbackProxy:
        ready = threading.Event()
        self._ready = ready
        self._thread.start()
        assert ready.wait(5), "proxy did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        handler = self._http if self.kind == "http" else self._socks

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:  # stopping: end quietly
                writer.close()

        self._server = self.loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def halt() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def url(self, with_login: bool = True) -> str:
        scheme = "http" if self.kind == "http" else "socks5h"
        login = f"{self.user}:{self.password}@" if self.user and with_login else ""
        return f"{scheme}://{login}127.0.0.1:{self.port}"

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if self.user is not None:
            login = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if fields.get("proxy-authorization") != f"Basic {login}":
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                    b"Connection: close\r\n\r\n"
                )
                await writer.drain()
                writer.close()
                return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
        else:  # absolute-form: http://host:port/path
            netloc = target.split("://", 1)[1].split("/", 1)[0]
            host, _, port = netloc.rpartition(":")
        upstream = await self._open(host, int(port))
        if upstream is None:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = upstream
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            kept = [x for x in lines if not x.lower().startswith("proxy-")]
            up_writer.write("\r\n".join(kept).encode("latin-1"))
        await self._pipe_both(reader, writer, up_reader, up_writer)

    async def _socks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, count = await reader.readexactly(2)
            methods = await reader.readexactly(count)
            if self.user is not None:
                if 2 not in methods:
                    writer.write(b"\x05\xff")
                    return
                writer.write(b"\x05\x02")
                _, ulen = await reader.readexactly(2)
                user = (await reader.readexactly(ulen)).decode()
                (plen,) = await reader.readexactly(1)
                password = (await reader.readexactly(plen)).decode()
                if (user, password) != (self.user, self.password):
                    self.refused += 1
                    writer.write(b"\x01\x01")
                    return
                writer.write(b"\x01\x00")
            else:
                writer.write(b"\x05\x00")
            _, cmd, _, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
            elif atyp == 3:
                (n,) = await reader.readexactly(1)
                host = (await reader.readexactly(n)).decode()
            else:
                host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            upstream = await self._open(host, port) if cmd == 1 else None
            if upstream is None:
                writer.write(b"\x05\x02\x00\x01" + bytes(6))  # not allowed
                return
            writer.write(b"\x05\x00\x00\x01" + bytes(6))
            await self._pipe_both(reader, writer, *upstream)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if host not in ("127.0.0.1", "localhost"):
            return None  # loopback only
        self.targets.append((host, port))
        return await asyncio.open_connection("127.0.0.1", port)

    async def _pipe_both(self, r1: Any, w1: Any, r2: Any, w2: Any) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        await asyncio.gather(pipe(r1, w2), pipe(r2, w1))


@pytest.fixture
def proxies() -> Any:
    started: list[LoopbackProxy] = []

    def start(kind: str, user: str | None = None, password: str | None = None) -> LoopbackProxy:
        proxy = LoopbackProxy(kind, user, password).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def chat(gw: Any, stream: bool = False) -> Any:
    with gw.client() as c:
        return c.post(
            "/cerebras/v1/chat/completions", json={**CHAT, "stream": stream}, headers=gw.auth()
        )


def keys_view(gw: Any) -> list[dict[str, Any]]:
    r = gw.api("GET", "/api/keys", params={"provider": "cerebras"})
    assert r.status_code == 200, r.text
    return list(r.json()["keys"])


def provider_view(gw: Any) -> dict[str, Any]:
    r = gw.api("GET", "/api/providers")
    assert r.status_code == 200, r.text
    assert PASSWORD not in r.text
    return next(p for p in r.json()["providers"] if p["name"] == "cerebras")


def test_http_connect_proxy_carries_requests_and_streams(
    gateway_factory: Any, mock: Any, proxies: Any
) -> None:
    proxy = proxies("http", USER, PASSWORD)
    gw = gateway_factory(
        env={"KEYGATE_PROXY": proxy.url(), "CEREBRAS_API_KEYS": "sk-proxied-key-0001"}
    )
    r = chat(gw)
    assert r.status_code == 200, r.text
    mock_port = int(mock.url.rsplit(":", 1)[1])
    assert ("127.0.0.1", mock_port) in proxy.targets  # the proxy made the connection
    assert mock.count("sk-proxied-key-0001") == 1  # and the mock got the request
    r = chat(gw, stream=True)
    assert r.status_code == 200 and "data:" in r.text
    assert mock.count("sk-proxied-key-0001") == 2
    assert proxy.refused == 0
    # shown everywhere with its login masked
    (key,) = keys_view(gw)
    assert key["proxy"] == show_proxy(proxy.url()) and "***@" in key["proxy"]
    assert [p["url"] for p in provider_view(gw)["proxies"]] == [key["proxy"]]
    assert f"via {key['proxy']}" in gw.log()  # the banner
    assert PASSWORD not in gw.log()


def test_socks5_proxy_with_login_from_the_config_file(
    gateway_factory: Any, mock: Any, proxies: Any
) -> None:
    socks = proxies("socks5", USER, PASSWORD)
    config = {"providers": {"cerebras": {"proxy": socks.url(), "keys": ["sk-socks-key-0001"]}}}
    gw = gateway_factory(config=config)
    for stream in (False, True):
        r = chat(gw, stream)
        assert r.status_code == 200, r.text
    mock_port = int(mock.url.rsplit(":", 1)[1])
    assert socks.targets.count(("127.0.0.1", mock_port)) >= 1
    assert mock.count("sk-socks-key-0001") == 2
    (key,) = keys_view(gw)
    assert key["proxy"].startswith("socks5h://***@127.0.0.1:")
    assert PASSWORD not in gw.log()


def test_no_proxy_variable_is_read_without_keygate_proxy(gateway_factory: Any, mock: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "NO_PROXY": ""}
    gw = gateway_factory(env={**env, "CEREBRAS_API_KEYS": "sk-direct-key-0001"})
    assert chat(gw).status_code == 200
    assert keys_view(gw)[0]["proxy"] == "direct"
    assert provider_view(gw)["proxies"] == []


def test_keygate_proxy_env_honours_http_proxy(
    gateway_factory: Any, mock: Any, proxies: Any
) -> None:
    proxy = proxies("http")
    env = {"KEYGATE_PROXY": "env", "HTTP_PROXY": proxy.url(), "NO_PROXY": ""}
    gw = gateway_factory(env={**env, "CEREBRAS_API_KEYS": "sk-env-key-0001"})
    assert chat(gw).status_code == 200
    assert proxy.targets and mock.count("sk-env-key-0001") == 1


def test_rendezvous_spreads_keys_and_moves_only_the_removed_proxys() -> None:
    urls = [f"socks5://127.0.0.1:{1080 + i}" for i in range(3)]
    states = [ProxyState(u) for u in urls]
    ids = range(1, 301)
    before = {i: rendezvous_rank(i, states)[0].url for i in ids}
    counts = {u: list(before.values()).count(u) for u in urls}
    assert all(60 <= n <= 140 for n in counts.values()), counts  # spread, not piled up
    assert before == {i: rendezvous_rank(i, list(reversed(states)))[0].url for i in ids}
    after = {i: rendezvous_rank(i, states[:2])[0].url for i in ids}
    moved = {i for i in ids if before[i] != after[i]}
    assert moved == {i for i in ids if before[i] == urls[2]}  # only the removed proxy's keys
    # a changed password does not move a key (the masked URL is what is hashed)
    old = [ProxyState(u.replace("://", "://u:old@")) for u in urls]
    new = [ProxyState(u.replace("://", "://u:new@")) for u in urls]
    assert all(rendezvous_rank(i, old)[0].shown == rendezvous_rank(i, new)[0].shown for i in ids)


def test_three_proxies_spread_nine_keys_by_rendezvous(
    gateway_factory: Any, mock: Any, proxies: Any
) -> None:
    started = [proxies("socks5") for _ in range(3)]
    keys = [f"sk-spread-key-{i:04d}" for i in range(9)]
    config = {
        "providers": {
            "cerebras": {"proxies": [p.url() for p in started], "keys": keys, "affinity": "off"}
        }
    }
    gw = gateway_factory(config=config)
    states = [ProxyState(p.url()) for p in started]
    views = keys_view(gw)
    assert len(views) == 9
    for key in views:
        assert key["proxy"] == rendezvous_rank(key["id"], states)[0].shown
    assert len({k["proxy"] for k in views}) >= 2
    for _ in range(9):
        assert chat(gw).status_code == 200
    # round robin used every key once: a proxy saw connections exactly when a key is its
    for proxy in started:
        assert bool(proxy.targets) == (show_proxy(proxy.url()) in {k["proxy"] for k in views})
    # the assignment survives a restart
    gw.stop()
    gw2 = gateway_factory(config=config, data_dir=gw.data_dir)
    assert {k["id"]: k["proxy"] for k in keys_view(gw2)} == {k["id"]: k["proxy"] for k in views}


def test_failing_proxies_are_retried_with_the_same_key(
    gateway_factory: Any, mock: Any, proxies: Any
) -> None:
    live = proxies("socks5", USER, PASSWORD)
    asks_login = proxies("http", USER, PASSWORD)  # given no login: answers 407
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"  # refuses connections
    keys = [f"sk-retry-key-{i:04d}" for i in range(12)]
    config = {
        "providers": {
            "cerebras": {
                "proxies": [dead, asks_login.url(with_login=False), live.url()],
                "proxy_cooldown_s": 3600,
                "retries": 0,  # no second key: the proxy retry alone must carry it
                "affinity": "off",  # every key in turn
                "keys": keys,
            }
        }
    }
    gw = gateway_factory(config=config)
    assigned = {k["proxy"] for k in keys_view(gw)}
    failing = {show_proxy(dead), asks_login.url(False)}
    assert assigned & failing  # some keys are on a failing proxy
    for _ in range(24):
        r = chat(gw)
        assert r.status_code == 200, r.text
    assert all(k["status"] == "active" and k["err_5xx"] == 0 for k in keys_view(gw))
    health = {p["url"]: p for p in provider_view(gw)["proxies"]}
    for url in assigned & failing:  # each failing proxy that has keys failed, and cools
        assert health[url]["errors"] >= 1, health
        assert health[url]["status"] == "cooling" and health[url]["cooldown_until"] > 0
    if asks_login.url(False) in assigned:
        assert asks_login.refused >= 1  # it did answer 407
    assert health[show_proxy(live.url())]["status"] == "active"
    assert live.targets
    with gw.client() as c:
        metrics = c.get("/metrics", headers=gw.admin()).text
    dead_errors = health[show_proxy(dead)]["errors"]
    assert (
        f'keygate_proxy_errors_total{{provider="cerebras",proxy="{show_proxy(dead)}"}} {dead_errors}.0'
        in metrics
    )
    assert PASSWORD not in gw.log() and PASSWORD not in metrics


def test_key_test_through_a_dead_proxy_blames_the_proxy(gateway_factory: Any, mock: Any) -> None:
    dead = f"socks5://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    config = {"providers": {"cerebras": {"proxy": dead, "keys": ["sk-tested-key-0001"]}}}
    gw = gateway_factory(config=config)
    (key,) = keys_view(gw)
    r = gw.api("POST", f"/api/keys/{key['id']}/test")
    assert r.status_code == 200, r.text
    assert PASSWORD not in r.text
    result = r.json()
    assert result["ok"] is False and result["status"] == 0
    assert "proxy failed" in result["error"]
    assert result["key"]["status"] == "active"
    assert keys_view(gw)[0]["status"] == "active"
    eventually(lambda: PASSWORD not in gw.log(), what="no password in the log")


@pytest.mark.parametrize(
    ("proxy", "problem"),
    [
        ("ftp://127.0.0.1:21", "must be a proxy URL"),
        ("socks4://127.0.0.1:1080", "must be a proxy URL"),
        ("http://127.0.0.1:99999", "port must be 1-65535"),
        ("http://127.0.0.1:3128/path", "no path"),
        ("http://127.0.0.1:31\n28", "control characters"),
        (f"http://{USER}:{PASSWORD}@169.254.169.254:80", "metadata"),
        (f"socks5://{USER}:{PASSWORD}@169.254.10.1:1080", "link-local"),
        (f"socks5://{USER}:{PASSWORD}@bad_host!:1080", "not a valid host"),
    ],
)
def test_bad_proxy_urls_are_one_line_config_errors(
    tmp_path: Path, proxy: str, problem: str
) -> None:
    path = tmp_path / "keygate.yaml"
    path.write_text(yaml.safe_dump({"providers": {"groq": {"proxies": [proxy]}}}))
    with pytest.raises(ConfigError) as err:
        load_settings({}, config_path=path)
    text = str(err.value)
    assert "\n" not in text and PASSWORD not in text
    assert str(path) in text and "providers.groq.proxies" in text and problem in text
    with pytest.raises(ConfigError) as err:
        load_settings({"KEYGATE_PROXY": proxy})
    text = str(err.value)
    assert "KEYGATE_PROXY" in text and problem in text and PASSWORD not in text


def test_proxy_settings_and_private_addresses(tmp_path: Path) -> None:
    metadata = f"http://{USER}:{PASSWORD}@169.254.169.254:80"
    s = load_settings({"KEYGATE_PROXY": metadata, "KEYGATE_ALLOW_PRIVATE_UPSTREAMS": "1"})
    assert s.proxy == [metadata]
    assert load_settings({"KEYGATE_PROXY": "direct"}).proxy == ["direct"]
    assert load_settings({"KEYGATE_PROXY": "env"}).proxy == ["env"]
    assert load_settings({}).proxy == []
    path = tmp_path / "keygate.yaml"
    path.write_text(yaml.safe_dump({"providers": {"groq": {"proxy": "direct", "proxies": []}}}))
    with pytest.raises(ConfigError, match="proxy or proxies, not both"):
        load_settings({}, config_path=path)
    path.write_text(yaml.safe_dump({"providers": {"groq": {"proxies": ["direct", metadata]}}}))
    with pytest.raises(ConfigError, match="cannot be mixed") as err:
        load_settings({"KEYGATE_ALLOW_PRIVATE_UPSTREAMS": "1"}, config_path=path)
    assert PASSWORD not in str(err.value)
    cfg = load_settings({}, config_path=None).providers["groq"]
    cfg.proxies = [check_proxy(f"socks5h://{USER}:{PASSWORD}@127.0.0.1:1080")]
    assert PASSWORD not in repr(cfg.public()) and cfg.public()["proxies"] == [
        "socks5h://***@127.0.0.1:1080"
    ]


def test_a_key_of_its_own_proxy(gateway_factory: Any, mock: Any, proxies: Any) -> None:
    socks = proxies("socks5", USER, PASSWORD)
    own, plain = "sk-own-proxy-key-0001", "sk-plain-direct-key-0002"
    env = {"CEREBRAS_API_KEYS": f"{own}|proxy={socks.url()}|tier=0,{plain}"}
    gw = gateway_factory(env=env, config={"providers": {"cerebras": {"affinity": "off"}}})
    shown = {k["masked"]: k["proxy"] for k in keys_view(gw)}
    assert sorted(shown.values()) == sorted(["direct", show_proxy(socks.url())])
    for _ in range(4):
        assert chat(gw).status_code == 200
    assert mock.count(own) == 2 and mock.count(plain) == 2
    mock_port = int(mock.url.rsplit(":", 1)[1])
    assert socks.targets == [("127.0.0.1", mock_port)]  # one pooled connection, own key only
    assert [p["url"] for p in provider_view(gw)["proxies"]] == [show_proxy(socks.url())]
    assert PASSWORD not in gw.log()


def test_a_bad_key_proxy_is_a_one_line_error() -> None:
    bad = f"sk-some-key-000001|proxy=ftp://{USER}:{PASSWORD}@127.0.0.1:21"
    with pytest.raises(ConfigError) as err:
        load_settings({"GROQ_API_KEYS": bad})
    text = str(err.value)
    assert "GROQ_API_KEYS" in text and "must be a proxy URL" in text
    assert PASSWORD not in text and "sk-some-key-000001" not in text and "\n" not in text
    s = load_settings({"GROQ_API_KEYS": "sk-some-key-000001|proxy=socks5://127.0.0.1:1080"})
    assert s.providers["groq"].key_proxies == {"sk-some-key-000001": "socks5://127.0.0.1:1080"}
    assert "key_proxies" not in s.providers["groq"].public()


def test_a_failing_proxy_cools_and_comes_back_after_its_cooldown() -> None:
    now = [1000.0]
    cfg = ProviderConfig(name="p", base_url="http://127.0.0.1:9", proxy_cooldown_s=30)
    urls = ["socks5://127.0.0.1:1081", "socks5://127.0.0.1:1082"]
    egress = Egress(cfg, urls, EgressSessions(), clock=lambda: now[0])
    own = egress.pick(7, "sk", [])
    assert own is not None and own.shown == egress.assigned(7, "sk")
    egress.failed(own)
    other = egress.pick(7, "sk", [])
    assert other is not None and other is not own  # passed over while it cools
    assert egress.pick(7, "sk", [other]) is own  # the only one left: used anyway
    assert egress.pick(7, "sk", [own, other]) is None
    health = {p["url"]: p for p in egress.public()}
    assert health[own.shown] == {
        "url": own.shown,
        "status": "cooling",
        "errors": 1,
        "cooldown_until": 1030.0,
    }
    now[0] = 1030.5
    assert egress.pick(7, "sk", []) is own  # back after proxy_cooldown_s
    assert {p["status"] for p in egress.public()} == {"active"}


def test_a_reload_brings_in_new_proxies_masked(
    gateway_factory: Any, mock: Any, proxies: Any, tmp_path: Path
) -> None:
    socks = proxies("socks5", USER, PASSWORD)
    path = tmp_path / "reload.yaml"
    path.write_text(yaml.safe_dump({"providers": {"cerebras": {"keys": ["sk-reload-key-0001"]}}}))
    gw = gateway_factory(args=["--config", str(path)])
    assert chat(gw).status_code == 200 and not socks.targets
    path.write_text(
        yaml.safe_dump(
            {"providers": {"cerebras": {"proxy": socks.url(), "keys": ["sk-reload-key-0001"]}}}
        )
    )
    mark = len(gw.log())
    gw.proc.send_signal(signal.SIGHUP)
    tail = wait_log(gw, r"reload: .* re-read, \d+ change", mark)
    assert f"providers.cerebras.proxies: now {show_proxy(socks.url())}" in tail
    assert chat(gw).status_code == 200 and socks.targets
    assert keys_view(gw)[0]["proxy"] == show_proxy(socks.url())
    assert PASSWORD not in gw.log()
