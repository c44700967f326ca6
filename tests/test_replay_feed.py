"""The replay's feed over real servers: the gateway's request log, the controller's cursors, the poller.

A real gateway on loopback serves stand-in vLLM replicas to the official `openai` client; the controller's
`RequestFeed` and `DemandPoller` read its /ebbtide/requests as they do in a cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from controller.demand.poller import DemandPoller
from controller.demand.requests import FinishedRequest, RequestFeed, parse_page
from controller.ports import NoData, PoolRef
from e2e.standin import BackgroundCluster, StandinConfig
from gateway.requestlog import RequestLog
from policies.replay import REPLAY_LAG_SECONDS
from policies.types import DemandSample
from tests.gateway_support import AppThread, gateway_for, make_pool, provider, wait_until

pytestmark = pytest.mark.timeout(60)
POOL = make_pool(
    providers=[provider("api", "http://127.0.0.1:9/v1", inputUsdPerMillion=3, outputUsdPerMillion=15)],
)


@pytest.fixture(scope="module")
def vllm() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(StandinConfig(output_tokens=6), replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def gw(vllm: BackgroundCluster) -> Iterator[Any]:
    with gateway_for([(POOL, [f"127.0.0.1:{p}" for p in vllm.ports])]) as gateway:
        yield gateway


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _send(gw: Any, n: int, *, stream: bool = False) -> list[tuple[float, int, int]]:
    """n requests through the gateway; (time sent, prompt, completion tokens) of each, as reported."""
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    out = []
    for i in range(n):
        sent = time.time()
        if stream:
            chunks = list(
                client.completions.create(
                    model="chat-model",
                    prompt="a b c"[: 1 + 2 * (i % 2)],
                    max_tokens=3,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
        else:
            usage = client.completions.create(model="chat-model", prompt="x y z w"[: 1 + 2 * i], max_tokens=2 + i).usage
        assert usage is not None
        out.append((sent, usage.prompt_tokens, usage.completion_tokens))
    return out


def test_the_gateway_logs_each_finished_request_with_its_arrival_and_tokens(gw: Any) -> None:
    status, first = _get(f"{gw.url}/ebbtide/requests?after=0")
    assert status == 200
    after = first["next"]
    sent = _send(gw, 3) + _send(gw, 2, stream=True)
    wait_until(lambda: _get(f"{gw.url}/ebbtide/requests?after={after}")[1]["next"] >= after + 5, what="5 logged")
    status, page = _get(f"{gw.url}/ebbtide/requests?after={after}")
    assert status == 200 and page["instance"] == first["instance"] and not page["more"]
    rows = page["requests"]
    assert [r[0] for r in rows] == list(range(after + 1, after + 6))
    assert {(r[1], r[2]) for r in rows} == {("default", "chat")}
    assert sorted((r[4], r[5]) for r in rows) == sorted((p, c) for _, p, c in sent)
    # Each arrival lies between when the client sent it and when the next one was sent.
    arrivals = sorted(r[3] for r in rows)
    for (sent_at, _, _), arrived in zip(sent, arrivals, strict=True):
        assert sent_at - 0.05 <= arrived <= sent_at + 2.0
    assert page["since"] <= arrivals[0]
    # Paging: one at a time, the cursor moves on and `more` says there is the rest.
    status, one = _get(f"{gw.url}/ebbtide/requests?after={after}&limit=1")
    assert (one["next"], one["more"], len(one["requests"])) == (after + 1, True, 1)


@pytest.mark.parametrize("query", ["after=-1", "after=x", "limit=0", "limit=1000000"])
def test_a_bad_query_is_a_400_naming_the_parameters(gw: Any, query: str) -> None:
    status, body = _get(f"{gw.url}/ebbtide/requests?{query}")
    assert status == 400
    assert "after must be an integer" in body["error"]["message"]


def test_the_feed_reads_only_what_is_new_and_the_poller_replays_it(gw: Any) -> None:
    async def scenario() -> tuple[list[int], DemandSample | NoData]:
        counts = []
        async with httpx.AsyncClient() as http:
            feed = RequestFeed(timeout=2.0)
            read = await feed.read(http, [gw.url])
            assert read.failure is None
            counts.append(sum(len(v) for v in read.requests.values()))
            await asyncio.to_thread(_send, gw, 2)
            await asyncio.sleep(0.2)
            read = await feed.read(http, [gw.url])
            counts.append(sum(len(v) for v in read.requests.values()))
            counts.append(sum(len(v) for v in (await feed.read(http, [gw.url])).requests.values()))

            # The poller, its clock run ahead past the replay's lag so that what was just sent is replayed.
            ahead = dt.timedelta(seconds=REPLAY_LAG_SECONDS + 60)
            poller = DemandPoller(
                http=http,
                interval=0.2,
                gateway_endpoints=lambda: [gw.url],
                clock=lambda: dt.datetime.now(dt.UTC) + ahead,
            )
            ref = PoolRef("chat", "default", "vllm", "default")
            poller.set_pool(ref, POOL.spec, [])
            await poller.read_gateway()
            return counts, await poller.read_pool(ref)

    counts, sample = asyncio.run(scenario())
    assert counts[1:] == [2, 0]
    assert isinstance(sample, DemandSample), sample
    costs = sample.replay_usd
    assert costs is not None and len(costs) == POOL.spec.target.max_replicas + 1
    # With no replica every request the gateway finished goes unsaved, at the fallback's price.
    _, page = _get(f"{gw.url}/ebbtide/requests?after=0")
    expected = sum((r[4] * 3 + r[5] * 15) / 1e6 for r in page["requests"])
    assert costs[0] == pytest.approx(expected, rel=1e-9)
    assert costs[0] > 0
    # One replica serves these few small requests on time: it costs only its GPU time, over the time the
    # replay covers (from the gateway's start to its clock, a minute ahead of now), and two cost twice that.
    price = POOL.spec.replica_usd_per_hour
    assert 60 / 3600 * price <= costs[1] <= 120 / 3600 * price
    assert costs[2] == pytest.approx(2 * costs[1], rel=1e-9)


class _LogServer:
    """A real server for one RequestLog that the test can swap (a restarted gateway) or break."""

    def __init__(self) -> None:
        self.log = RequestLog()
        self.broken = False

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            if self.broken:
                return web.Response(status=503)
            return web.json_response(self.log.page(int(request.query["after"]), int(request.query.get("limit", 2))))

        app = web.Application()
        app.router.add_get("/ebbtide/requests", handle)
        return app


def _arrivals(read: Any) -> list[float]:
    return sorted(r.arrived_at for rows in read.requests.values() for r in rows)


def test_the_feed_pages_catches_up_after_a_failure_and_rereads_a_restarted_process() -> None:
    server = _LogServer()
    with AppThread(server.app) as app:
        url = f"http://{app.address}"

        async def scenario() -> list[Any]:
            reads = []
            async with httpx.AsyncClient() as http:
                feed = RequestFeed(timeout=2.0)
                for i in range(5):  # the server pages by 2: three pages in one read
                    server.log.record("ns", "p", 100.0 + i, 10, 1)
                reads.append(await feed.read(http, [url]))
                server.broken = True
                server.log.record("ns", "p", 200.0, 10, 1)
                reads.append(await feed.read(http, [url]))
                server.broken = False
                reads.append(await feed.read(http, [url]))
                server.log = RequestLog()  # the process restarted: its numbers start again at 1
                server.log.record("ns", "p", 300.0, 10, 1)
                server.log.record("ns", "q", 301.0, 10, 1)
                reads.append(await feed.read(http, [url]))
            return reads

        reads = asyncio.run(scenario())
    assert _arrivals(reads[0]) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert reads[1].failure is not None and "503" in reads[1].failure and not reads[1].requests
    assert _arrivals(reads[2]) == [200.0]  # nothing lost while it failed, nothing read twice
    assert _arrivals(reads[3]) == [300.0, 301.0]
    assert set(reads[3].requests) == {("ns", "p"), ("ns", "q")}
    assert reads[3].requests[("ns", "q")] == [FinishedRequest(301.0, 10, 1)]


def test_pages_with_bad_rows_skip_them_and_a_bad_frame_is_no_data() -> None:
    good = {"instance": "a", "since": 1.0, "next": 3, "more": False}
    page = parse_page({**good, "requests": [[1, "ns", "p", 5.0, 3, 4], [2, "ns", "p", "soon", 3, 4], [3, "ns"]]})
    assert not isinstance(page, NoData)
    assert page.requests == {("ns", "p"): [FinishedRequest(5.0, 3, 4)]} and page.skipped == 2
    for bad in ({**good, "since": "x", "requests": []}, {**good, "next": -1, "requests": []}, [], {"requests": []}):
        assert isinstance(parse_page(bad), NoData)


def test_the_log_trims_by_age_and_size_and_says_from_when_it_is_complete() -> None:
    now = [1000.0]
    log = RequestLog(keep_seconds=60.0, max_entries=3, clock=lambda: now[0])
    assert log.since == 1000.0
    for i in range(4):
        now[0] += 1
        log.record("ns", "p", now[0] - 0.5, i, i)
    page = log.page(0)
    assert [r[0] for r in page["requests"]] == [2, 3, 4] and page["since"] == 1001.0
    now[0] += 61.5  # every entry finished more than a minute ago
    page = log.page(0)
    assert page["requests"] == [] and page["next"] == 4 and not page["more"]
    assert page["since"] == 1004.0
    with pytest.raises(ValueError):
        log.page(-1)


def test_a_page_is_the_next_rows_after_the_cursor_from_either_end_of_the_log() -> None:
    log = RequestLog(max_entries=40)
    for i in range(50):
        log.record("ns", "p", float(i), i, 0)
    kept = list(range(11, 51))
    for after in range(0, 56):
        for limit in (1, 7, 25, 100):
            page = log.page(after, limit)
            want = [s for s in kept if s > after][:limit]
            assert [r[0] for r in page["requests"]] == want, (after, limit)
            assert page["next"] == (want[-1] if want else 50)
            assert page["more"] == (bool(want) and want[-1] < 50)
