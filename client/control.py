"""A Python client of ``unseen serve``: the WebSocket control channel (``websockets``) and the REST API.

    async with Control("http://127.0.0.1:8080") as c:
        oid = (await c.click("cam", 120, 80))["object"]
        await c.click("cam", 130, 95, positive=False, object_id=oid)
        await c.click("cam", box=(100, 60, 180, 140))  # a box alone starts an object too
        print(await c.objects("cam"))

Every failure is :class:`ControlError` with the server's one-line message.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import websockets


class ControlError(RuntimeError):
    """The server refused a request, or cannot be reached (one line with the fix)."""


def ws_url(base: str, token: str | None = None) -> str:
    parts = urlsplit(base if "://" in base else f"http://{base}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ControlError(f"URL {base!r} is not http(s):// or ws(s)://; give the server's address, "
                           f"e.g. http://127.0.0.1:8080")
    query = f"token={token}" if token else ""
    return urlunsplit((scheme, parts.netloc, "/ws", query, ""))


class Control:
    """The WebSocket control channel: one request at a time or many concurrently (ids match replies)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 90.0) -> None:
        self.url = ws_url(url, token)
        self.token = token
        self.timeout = timeout
        self._ws: Any = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.stats: asyncio.Queue = asyncio.Queue(maxsize=100)

    async def __aenter__(self) -> "Control":
        try:
            self._ws = await asyncio.wait_for(websockets.connect(self.url, max_size=2**22), self.timeout)
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as exc:
            raise ControlError(f"cannot connect to {self.url} ({exc}); check that 'unseen serve' runs there "
                               f"and the token") from None
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                if msg.get("type") in ("stats", "closed"):
                    if self.stats.full():
                        self.stats.get_nowait()  # keep the newest
                    self.stats.put_nowait(msg)
                    continue
                future = self._waiting.pop(msg.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ControlError("the server closed the control channel; reconnect"))

    async def request(self, op: str, **fields: Any) -> Any:
        mid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[mid] = future
        await self._ws.send(json.dumps({"id": mid, "op": op, **fields}))
        try:
            reply = await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(mid, None)
            raise ControlError(f"no reply to {op!r} within {self.timeout:g} s; check the server's log") from None
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "request failed"))
        return reply.get("result")

    async def streams(self) -> list[dict]:
        return await self.request("streams")

    async def state(self, stream: str) -> dict:
        return await self.request("state", stream=stream)

    async def objects(self, stream: str) -> list[dict]:
        return await self.request("objects", stream=stream)

    async def click(self, stream: str, x: float | None = None, y: float | None = None, *, positive: bool = True,
                    object_id: int | None = None, pts: int | None = None, frame: int | None = None,
                    box: Sequence[float] | None = None) -> dict:
        """A click (``x``, ``y``), a ``box`` (x0, y0, x1, y1), or both, on ``object_id`` (None: a new object)."""
        fields: dict[str, Any] = {"object": object_id, "pts": pts, "frame": frame}
        if x is not None or y is not None:
            fields.update(x=x, y=y, positive=positive)
        if box is not None:
            fields["box"] = list(box)
        return await self.request("click", stream=stream, **fields)

    async def remove(self, stream: str, object_id: int) -> dict:
        return await self.request("remove", stream=stream, object=object_id)

    async def clear(self, stream: str) -> dict:
        return await self.request("clear", stream=stream)

    async def effect(self, stream: str, object_id: int, effect: str) -> dict:
        return await self.request("effect", stream=stream, object=object_id, effect=effect)

    async def subscribe(self, stream: str, every: float = 1.0) -> dict:
        return await self.request("subscribe", stream=stream, every=every)


def rest(url: str, method: str, path: str, body: dict | None = None, *, token: str | None = None,
         timeout: float = 30.0) -> Any:
    """One REST call (standard library); raises :class:`ControlError` with the server's message."""
    base = url if "://" in url else f"http://{url}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error")
        except ValueError:
            message = None
        raise ControlError(message or f"{method} {path} failed with HTTP {exc.code}; check the URL") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ControlError(f"cannot reach {base} ({getattr(exc, 'reason', exc)}); check that 'unseen serve' "
                           f"runs there") from None
