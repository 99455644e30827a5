"""An in-process ``unseen serve`` app behind aiohttp's test client, for the server tests."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp.test_utils import TestClient, TestServer

from unseen.server import config as cfg
from unseen.server.app import create_app

SYNTH = {"name": "cam", "uri": "synthetic://cam", "loop": True, "width": 192, "height": 112, "fps": 15}


def settings(**kw) -> cfg.Settings:
    """Classical backends, no demo stream, a 3-frame delay; ``kw`` overrides."""
    base = dict(backends={"segmenter": "classical", "propagator": "classical", "inpainter": "classical"},
                demo=False, delay=3)
    base.update(kw)
    return cfg.Settings(**base)


@contextlib.asynccontextmanager
async def client(s: cfg.Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(s))) as c:
        yield c


async def wait_frames(c: TestClient, name: str, n: int = 5, timeout: float = 20.0, **request) -> dict:
    """The stream's state once it has output ``n`` frames (polled; fails after ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await (await c.get(f"/api/streams/{name}", **request)).json()
        if state["frames_out"] >= n:
            return state
        assert asyncio.get_running_loop().time() < deadline, f"stream {name} produced no frames: {state}"
        await asyncio.sleep(0.1)


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))
