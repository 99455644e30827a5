"""Churn leaves nothing behind: 100 WebSocket connect/request/close cycles and 20 stream create/delete
cycles (every 4th with a click) against the app in-process; open file descriptors and threads are back
at their baseline."""
from __future__ import annotations

import asyncio
import os
import threading

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from unseen.server import config as cfg
from unseen.server.app import create_app

pytestmark = pytest.mark.timeout(120)

CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}
WS_CYCLES, STREAM_CYCLES = 100, 20
# asyncio's default executor (LiveStream is built and closed there) keeps its threads, named
# "asyncio_N", for reuse; it starts them as needed, up to this many, so they are not a leak
POOL_MAX = min(32, (os.cpu_count() or 1) + 4)


def synthetic(name: str) -> dict:
    return {"name": name, "uri": "synthetic://" + name, "loop": True, "width": 96, "height": 64, "fps": 30}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def own_threads() -> list[str]:
    """Live threads but asyncio's executor pool (counted apart, bounded by POOL_MAX)."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def pool_threads() -> int:
    return sum(t.name.startswith("asyncio_") for t in threading.enumerate())


async def ws_cycle(c: TestClient, i: int) -> None:
    async with c.ws_connect("/ws") as ws:
        await ws.send_json({"id": i, "op": "streams"})
        reply = await asyncio.wait_for(ws.receive_json(), 30)
        assert reply["id"] == i and reply["ok"] is True, reply


async def stream_cycle(c: TestClient, name: str, click: bool = False) -> None:
    r = await c.post("/api/streams", json=synthetic(name))
    assert r.status == 201, await r.text()
    deadline = asyncio.get_running_loop().time() + 30
    while (await (await c.get(f"/api/streams/{name}")).json())["frames_out"] < 3:
        assert asyncio.get_running_loop().time() < deadline, f"stream {name} sent no frames"
        await asyncio.sleep(0.05)
    if click:  # the click's segmentation runs on the pipeline's prompt thread: it must end too
        r = await c.post(f"/api/streams/{name}/objects", json={"x": 25, "y": 25})
        assert r.status == 200, await r.text()
    r = await c.delete(f"/api/streams/{name}")
    assert r.status == 200, await r.text()


async def settle(baseline_fds: int, baseline_threads: list[str], timeout: float = 20.0) -> tuple[int, list[str]]:
    """Poll until fds and threads are back at the baseline, or the deadline passes; the last reading."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        fds, threads = open_fds(), own_threads()
        if (fds <= baseline_fds and threads == baseline_threads) or asyncio.get_running_loop().time() > deadline:
            return fds, threads
        await asyncio.sleep(0.05)


def test_websocket_and_stream_churn_leaves_no_fds_or_threads():
    settings = cfg.Settings(backends=CLASSICAL, demo=False, delay=2)

    async def body():
        app = create_app(settings)
        # no keep-alive: every request's connection is closed, so a pooled socket is not counted as a leak
        async with TestClient(TestServer(app), connector=aiohttp.TCPConnector(force_close=True)) as c:
            await ws_cycle(c, 0)  # warm-up: imports, the executor's first threads, the backends' caches
            await stream_cycle(c, "warm", click=True)
            fds0, threads0 = await settle(10 ** 6, [])
            for i in range(1, WS_CYCLES + 1):
                await ws_cycle(c, i)
            for i in range(STREAM_CYCLES):
                await stream_cycle(c, f"churn{i}", click=i % 4 == 0)
            assert (await (await c.get("/api/streams")).json()) == []
            fds, threads = await settle(fds0, threads0)
            return fds0, threads0, fds, threads

    fds0, threads0, fds, threads = asyncio.run(asyncio.wait_for(body(), 100))
    assert fds <= fds0, f"open fds {fds0} -> {fds} after the churn"
    assert threads == threads0, f"threads {threads0} -> {threads} after the churn"
    assert pool_threads() <= POOL_MAX
    print(f"churn: fds {fds0} -> {fds}, threads {len(threads0)} -> {len(threads)} (+{pool_threads()} pooled)")
