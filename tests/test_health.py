"""The health server over real loopback HTTP: /healthz, /readyz, /metrics, and bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from controller.daemon.health import HealthServer, parse_listen_address


class Flags:
    """Live and ready states a test flips, as the daemon's loop and elector would."""

    def __init__(self) -> None:
        self.live: tuple[bool, str] = (True, "ticked 0.2 s ago")
        self.ready: tuple[bool, str] = (False, "not the leader (holder: other-pod)")

    def live_check(self) -> tuple[bool, str]:
        return self.live

    def ready_check(self) -> tuple[bool, str]:
        return self.ready


async def _serve(flags: Flags, registry: CollectorRegistry, **checks: Callable[[], tuple[bool, str]]) -> HealthServer:
    server = HealthServer(
        "127.0.0.1",
        0,
        live=checks.get("live", flags.live_check),
        ready=checks.get("ready", flags.ready_check),
        registry=registry,
    )
    await server.start()
    return server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return answer


def test_healthz_and_readyz_follow_the_checks(registry: CollectorRegistry) -> None:
    async def scenario() -> None:
        flags = Flags()
        server = await _serve(flags, registry)
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                live = await http.get("/healthz")
                assert (live.status_code, live.text) == (200, "ok: ticked 0.2 s ago\n")
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.text == "not ok: not the leader (holder: other-pod)\n"

                flags.live = (False, "no tick for 31 s (tick 5 s)")
                flags.ready = (True, "leading")
                live = await http.get("/healthz")
                assert (live.status_code, live.text) == (503, "not ok: no tick for 31 s (tick 5 s)\n")
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.text) == (200, "ok: leading\n")
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_metrics_serves_the_registry_in_prometheus_text(registry: CollectorRegistry) -> None:
    ticks = Counter("ebbtide_test_ticks", "Ticks run.", registry=registry)
    ticks.inc(3)

    async def scenario() -> None:
        server = await _serve(Flags(), registry)
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                answer = await http.get(f"http://127.0.0.1:{server.port}/metrics")
        finally:
            await server.stop()
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=")
        assert "ebbtide_test_ticks_total 3.0" in answer.text

    asyncio.run(scenario())


def test_a_raising_check_is_a_503_not_a_dead_server(registry: CollectorRegistry) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("loop state unreadable")

    async def scenario() -> None:
        server = await _serve(Flags(), registry, ready=broken)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert "RuntimeError: loop state unreadable" in ready.text
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(registry: CollectorRegistry) -> None:
    async def scenario() -> None:
        server = await _serve(Flags(), registry)
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                missing = await http.get("/nope")
                assert missing.status_code == 404
                assert "/nope" in missing.text and "/readyz" in missing.text
                post = await http.post("/healthz", content=b"x")
                assert post.status_code == 405
                assert "POST" in post.text
                head = await http.head("/healthz")
                assert head.status_code == 200 and head.content == b""
                assert int(head.headers["content-length"]) == len(b"ok: ticked 0.2 s ago\n")

            garbage = await _raw(server.port, b"hello there\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400 ")
            assert b"malformed request line" in garbage
            huge = await _raw(server.port, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n")
            assert huge.startswith(b"HTTP/1.1 431 ")
            # A client that connects and says nothing, then leaves, must not break anything either.
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()

            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_start_binds_the_asked_port_and_stop_frees_it(registry: CollectorRegistry) -> None:
    async def scenario() -> None:
        first = await _serve(Flags(), registry)
        port = first.port
        assert port > 0
        await first.stop()
        again = HealthServer("127.0.0.1", port, live=Flags().live_check, ready=Flags().ready_check, registry=registry)
        assert await again.start() == port
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        finally:
            await again.stop()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(timeout=2) as http:
                await http.get(f"http://127.0.0.1:{port}/healthz")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (":9090", ("0.0.0.0", 9090)),
        ("[::1]:8081", ("::1", 8081)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("8081", "expected HOST:PORT"), ("host:http", "'http' is not a number"), ("host:70000", "outside 0-65535")],
)
def test_parse_listen_address_names_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_listen_address(text)
