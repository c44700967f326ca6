"""`Watched` against a small Kubernetes-shaped HTTP server on loopback (as kopf tests against a fake API
server): a list, a watch whose events apply in order, a `410 Gone` that makes it relist, and a watch
error that it survives. The real API server's behaviour is covered by e2e/test_controller_snapshots.py;
a 410 cannot be provoked there on demand (it needs an etcd compaction)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from kubernetes import client

from controller.daemon.watch import Watched


def _pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "llm", "resourceVersion": version}}


class FakeApi:
    """GET /api/v1/namespaces/llm/pods: lists, and watches scripted per call."""

    def __init__(self) -> None:
        self.lists = 0
        self.watch_versions: list[str] = []
        self.listed = [[_pod("a", "10")], [_pod("a", "30"), _pod("c", "31")], [_pod("c", "40")]]
        self.watches: list[list[dict[str, Any]]] = [
            [
                {"type": "ADDED", "object": _pod("b", "11")},
                {"type": "MODIFIED", "object": _pod("a", "12")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                {"type": "DELETED", "object": _pod("b", "16")},
            ],
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
            [{"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd is sad"}}],
        ]

    async def pods(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            items = self.listed[min(self.lists, len(self.listed) - 1)]
            self.lists += 1
            version = items[-1]["metadata"]["resourceVersion"]
            return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": version}, "items": items})
        self.watch_versions.append(request.query.get("resourceVersion", ""))
        events = self.watches.pop(0) if self.watches else []
        response = web.StreamResponse()
        await response.prepare(request)
        for event in events:
            await response.write((json.dumps(event) + "\n").encode())
        while not events and request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.05)  # an idle watch, until the client goes away
        return response


async def _scenario() -> tuple[FakeApi, dict[tuple[str, str], str], list[str]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/llm/pods", fake.pods)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api = client.ApiClient(configuration)
    core = client.CoreV1Api(api)
    changes: list[str] = []
    watched = Watched(
        "pods",
        lambda **kw: core.list_namespaced_pod("llm", **kw),
        lambda obj: str(obj["metadata"]["resourceVersion"]),
        on_change=lambda event, key: changes.append(f"{event} {key[1]}"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(watched.run(stop))
    try:
        for _ in range(200):
            if fake.lists >= 3 and ("llm", "a") not in watched.items:
                break
            await asyncio.sleep(0.05)
        return fake, dict(watched.items), changes
    finally:
        stop.set()
        watched.shutdown()
        await asyncio.wait_for(task, 10)
        api.close()
        await runner.cleanup()


def test_events_apply_in_order_and_a_410_relists() -> None:
    fake, items, changes = asyncio.run(_scenario())
    # First watch from the list's version; the second from the bookmark's (the last version seen).
    assert fake.watch_versions[:2] == ["10", "16"]
    assert changes[:4] == ["RELIST a", "ADDED b", "MODIFIED a", "DELETED b"]
    # The 410 made it list again (from scratch: no version); the 500 too, after a back-off; each list's
    # objects replace the last's.
    assert fake.lists >= 3 and fake.watch_versions[2] == "31"
    assert items == {("llm", "c"): "40"}
    assert "RELIST c" in changes and "RELIST a" in changes[4:]
