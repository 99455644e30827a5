"""The aiohttp application of ``unseen serve``: everything on one port.

* ``/`` and ``/static/*``: the browser client (no CDN, nothing external);
* ``POST /api/streams/{name}/offer``: WebRTC signalling (viewer, or ``"publish": true`` for a webcam);
* ``GET /ws``: the WebSocket control channel (JSON requests ``{"id", "op", ...}``, replies
  ``{"id", "ok", "result"|"error"}``, and ``{"type": "stats"}`` pushes after ``subscribe``);
* ``/api/streams`` (list, add, remove, state) and ``/api/streams/{name}/objects`` (list, click, clear,
  remove, effect);
* ``/healthz/live``, ``/healthz/ready``, ``/metrics``.

Errors are JSON ``{"error": "<cause>; <fix>"}`` with a fitting status; none of them stops the server.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from .config import OutputConfig, Settings, SourceConfig
from .live import LiveStream, StreamError
from .metrics import Metrics
from .webrtc import Signalling

log = logging.getLogger("unseen.server")

STATIC = Path(__file__).resolve().parent.parent / "client" / "static"
try:  # the installed package layout
    import unseen.client as _client

    STATIC = Path(_client.__file__).resolve().parent / "static"
except ImportError:  # pragma: no cover
    pass

OPS = ("streams", "state", "objects", "click", "remove", "clear", "effect", "subscribe", "unsubscribe")


class Server:
    """The streams of one ``unseen serve``, their viewers and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.streams: dict[str, LiveStream] = {}
        self.signalling = Signalling(settings.ice, settings.limits.max_viewers)
        self.signalling.on_viewers_changed = self._viewers_changed
        self.ready = False
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ streams
    def stream(self, name: str) -> LiveStream:
        stream = self.streams.get(name)
        if stream is None or stream.closed:
            known = ", ".join(sorted(self.streams)) or "none"
            raise StreamError(f"unknown stream {name!r} (streams: {known}); use one of them or add it", 404)
        return stream

    def _check_room(self, name: str) -> None:
        if name in self.streams:
            raise StreamError(f"stream {name!r} exists already; choose another name or remove it first", 409)
        if len(self.streams) >= self.settings.limits.max_streams:
            raise StreamError(f"this server already serves {len(self.streams)} streams (the limit); remove one "
                              f"or raise limits.max_streams", 429)

    async def add(self, source: SourceConfig, outputs: OutputConfig | None = None) -> LiveStream:
        async with self._lock:
            self._check_room(source.name)
            loop = asyncio.get_running_loop()
            stream = await loop.run_in_executor(None, lambda: LiveStream(
                source.name, source, self.settings, self.metrics, loop, outputs=outputs))
            self.streams[source.name] = stream.start()
            self.metrics.streams.set(len(self.streams))
        log.info("stream %s: %s", source.name, stream.describe()["source"])
        return stream

    def add_webcam(self, name: str) -> LiveStream:
        """A stream fed by a browser's camera (created while answering its offer)."""
        from .config import NAME

        if not NAME.match(name):
            raise StreamError(f"stream name {name!r} must be 1-64 letters, digits, '_', '.', '-'; rename it")
        self._check_room(name)
        stream = LiveStream(name, None, self.settings, self.metrics, asyncio.get_running_loop())
        self.streams[name] = stream.start()
        self.metrics.streams.set(len(self.streams))
        return stream

    async def remove(self, name: str) -> None:
        stream = self.stream(name)
        self.streams.pop(name, None)
        for pc in list(stream.viewers):
            await self.signalling._close(pc)
        await stream.aclose()
        self.metrics.streams.set(len(self.streams))
        self._recount_viewers()

    def _viewers_changed(self, stream: LiveStream) -> None:
        if not stream.closed:
            self.metrics.stream_viewers.labels(stream.name).set(len(stream.viewers))
        self._recount_viewers()
        if stream.config is None and stream.closed:
            self.streams.pop(stream.name, None)
            self.metrics.streams.set(len(self.streams))

    def _recount_viewers(self) -> None:
        self.metrics.viewers.set(sum(len(s.viewers) for s in self.streams.values()))

    async def start(self) -> None:
        for source in self.settings.effective_sources():
            await self.add(source, self.settings.outputs.get(source.name))
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.signalling.close()
        await asyncio.gather(*(s.aclose() for s in self.streams.values()), return_exceptions=True)
        self.streams.clear()
        self.metrics.streams.set(0)

    # ------------------------------------------------------------------ control (WS and REST)
    async def control(self, op: str, msg: dict) -> Any:
        if op == "streams":
            return [s.describe() for s in self.streams.values()]
        stream = self.stream(_str(msg, "stream"))
        if op == "state":
            return stream.describe()
        if op == "objects":
            return stream.objects()
        if op == "click":
            oid = await stream.click(_num(msg, "x"), _num(msg, "y"), positive=bool(msg.get("positive", True)),
                                     object_id=_opt_int(msg, "object"), pts=_opt_int(msg, "pts"),
                                     frame=_opt_int(msg, "frame"))
            return {"object": oid, "objects": stream.objects()}
        if op == "remove":
            return {"object": await stream.remove_object(_int(msg, "object")), "objects": stream.objects()}
        if op == "clear":
            await stream.clear()
            return {"objects": stream.objects()}
        if op == "effect":
            oid = await stream.set_effect(_int(msg, "object"), _str(msg, "effect"))
            return {"object": oid, "objects": stream.objects()}
        raise StreamError(f"unknown op {op!r}; use one of: {', '.join(OPS)}")


# --------------------------------------------------------------------------- validation
def _field(msg: dict, key: str) -> Any:
    if key not in msg:
        raise StreamError(f"the message has no {key!r}; add it")
    return msg[key]


def _num(msg: dict, key: str) -> float:
    v = _field(msg, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise StreamError(f"{key!r} must be a number, not {v!r}; send pixel coordinates of the frame")
    return float(v)


def _int(msg: dict, key: str) -> int:
    v = _field(msg, key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise StreamError(f"{key!r} must be an integer, not {v!r}; send an object id from 'objects'")
    return v


def _opt_int(msg: dict, key: str) -> int | None:
    return None if msg.get(key) is None else _int(msg, key)


def _str(msg: dict, key: str) -> str:
    v = _field(msg, key)
    if not isinstance(v, str):
        raise StreamError(f"{key!r} must be a string, not {v!r}; fix the message")
    return v


# --------------------------------------------------------------------------- HTTP layer
SERVER = web.AppKey("server", Server)


def _server(request: web.Request) -> Server:
    return request.app[SERVER]


def _authorized(request: web.Request) -> bool:
    token = _server(request).settings.limits.token
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    given = given[7:] if given.startswith("Bearer ") else request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def _require_token(request: web.Request) -> None:
    if not _authorized(request):
        raise StreamError("missing or wrong access token; send 'Authorization: Bearer TOKEN' (or ?token=TOKEN)",
                          401)


def _check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser (scripts, the python client): the token protects those
    allowed = _server(request).settings.limits.origins
    own = {f"{request.scheme}://{request.host}"}
    parts = urlsplit(origin)
    if "*" in allowed or origin in allowed or origin in own or parts.netloc == request.host:
        return
    raise StreamError(f"origin {origin!r} is not allowed; add it to limits.origins (UNSEEN_LIMITS__ORIGINS)", 403)


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except StreamError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            message = (f"request body too large (limit {_server(request).settings.limits.max_message_bytes} "
                       f"bytes); send a smaller body")
        elif exc.status == 404:
            message = f"no such path {request.path!r}; see /api/streams, /ws, /metrics, /healthz/live"
        return web.json_response({"error": message}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - one failed request never stops the server
        log.exception("request %s %s failed", request.method, request.path)
        return web.json_response({"error": f"internal error ({type(exc).__name__}: {exc}); see the server log"},
                                 status=500)


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StreamError("the request body is not JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise StreamError("the request body must be a JSON object; send {...}")
    return body


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    server = _server(request)
    streams = {name: s.state for name, s in server.streams.items()}
    if not server.ready:
        return web.json_response({"status": "starting", "streams": streams}, status=503)
    return web.json_response({"status": "ready", "streams": streams})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=_server(request).metrics.render(), content_type="text/plain", charset="utf-8")


async def list_streams(request: web.Request) -> web.Response:
    return web.json_response(await _server(request).control("streams", {}))


async def add_stream(request: web.Request) -> web.Response:
    _require_token(request)
    body = await _json(request)
    try:
        source = SourceConfig(**{k: v for k, v in body.items() if k not in ("publish", "record")})
        outputs = OutputConfig(publish=body.get("publish"), record=body.get("record"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise StreamError(f"stream setting {where!r}: {first['msg']}; fix the request") from None
    stream = await _server(request).add(source, outputs)
    return web.json_response(stream.describe(), status=201)


async def get_stream(request: web.Request) -> web.Response:
    return web.json_response(await _server(request).control("state", {"stream": request.match_info["name"]}))


async def delete_stream(request: web.Request) -> web.Response:
    _require_token(request)
    await _server(request).remove(request.match_info["name"])
    return web.json_response({"removed": request.match_info["name"]})


async def objects(request: web.Request) -> web.Response:
    return web.json_response(await _server(request).control("objects", {"stream": request.match_info["name"]}))


async def object_op(request: web.Request) -> web.Response:
    """POST .../objects (a click), DELETE .../objects (clear), DELETE/PATCH .../objects/{id}."""
    _require_token(request)
    name = request.match_info["name"]
    oid = request.match_info.get("id")
    if request.method == "POST":
        msg = await _json(request)
        op = "click"
    elif request.method == "DELETE":
        msg, op = {}, ("clear" if oid is None else "remove")
    else:
        msg, op = await _json(request), "effect"
    msg["stream"] = name
    if oid is not None:
        if not oid.isdigit():
            raise StreamError(f"object id {oid!r} is not a number; use an id from the objects list")
        msg["object"] = int(oid)
    return web.json_response(await _server(request).control(op, msg))


async def offer(request: web.Request) -> web.Response:
    _check_origin(request)
    server = _server(request)
    body = await _json(request)
    name = request.match_info["name"]
    if body.get("publish"):
        _require_token(request)
        answer, _ = await server.signalling.answer(body, None, create_webcam=lambda: server.add_webcam(name))
    else:
        answer, _ = await server.signalling.answer(body, server.stream(name))
    return web.json_response(answer)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    _check_origin(request)
    _require_token(request)
    server = _server(request)
    cap = server.settings.limits.max_message_bytes
    ws = web.WebSocketResponse(max_msg_size=4 * cap, heartbeat=20)
    await ws.prepare(request)
    subscriptions: dict[str, asyncio.Task] = {}
    pending: set[asyncio.Task] = set()

    async def reply(payload: dict) -> None:
        if not ws.closed:
            await ws.send_json(payload)

    async def handle(msg: dict) -> None:
        mid = msg.get("id")
        try:
            op = _str(msg, "op")
            if op == "subscribe":
                name = server.stream(_str(msg, "stream")).name
                if name not in subscriptions:
                    subscriptions[name] = asyncio.ensure_future(push_stats(name, float(msg.get("every", 1.0))))
                result: Any = {"subscribed": name}
            elif op == "unsubscribe":
                task = subscriptions.pop(_str(msg, "stream"), None)
                if task:
                    task.cancel()
                result = {"unsubscribed": msg["stream"]}
            else:
                result = await server.control(op, msg)
            await reply({"id": mid, "ok": True, "result": result})
        except StreamError as exc:
            await reply({"id": mid, "ok": False, "error": str(exc), "status": exc.status})
        except Exception as exc:  # noqa: BLE001
            log.exception("control message failed")
            await reply({"id": mid, "ok": False, "error": f"internal error ({exc}); see the server log",
                         "status": 500})

    async def push_stats(name: str, every: float) -> None:
        every = min(max(every, 0.2), 10.0)
        while not ws.closed:
            stream = server.streams.get(name)
            if stream is None:
                await reply({"type": "closed", "stream": name})
                return
            await reply({"type": "stats", "stream": name, "state": stream.describe()})
            await asyncio.sleep(every)

    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                if len(message.data.encode()) > cap:
                    await reply({"id": None, "ok": False, "status": 413,
                                 "error": f"message of {len(message.data)} bytes is over the {cap}-byte limit; "
                                          f"send a smaller message"})
                    continue
                try:
                    msg = json.loads(message.data)
                    if not isinstance(msg, dict):
                        raise ValueError
                except ValueError:
                    await reply({"id": None, "ok": False, "status": 400,
                                 "error": "the message is not a JSON object; send {\"id\": 1, \"op\": ..., ...}"})
                    continue
                task = asyncio.ensure_future(handle(msg))  # a slow click never blocks the channel
                pending.add(task)
                task.add_done_callback(pending.discard)
            elif message.type == WSMsgType.BINARY:
                await reply({"id": None, "ok": False, "status": 400,
                             "error": "binary messages are not understood; send JSON text"})
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        for task in list(subscriptions.values()) + list(pending):
            task.cancel()
    return ws


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=settings.limits.max_message_bytes)
    server = Server(settings)
    app[SERVER] = server

    async def on_startup(app: web.Application) -> None:
        await server.start()

    async def on_cleanup(app: web.Application) -> None:
        await server.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_get("/", index)
    r.add_static("/static/", STATIC, show_index=False)
    r.add_get("/healthz/live", live)
    r.add_get("/healthz/ready", ready)
    r.add_get("/metrics", metrics)
    r.add_get("/ws", websocket)
    r.add_get("/api/streams", list_streams)
    r.add_post("/api/streams", add_stream)
    r.add_get("/api/streams/{name}", get_stream)
    r.add_delete("/api/streams/{name}", delete_stream)
    r.add_post("/api/streams/{name}/offer", offer)
    r.add_get("/api/streams/{name}/objects", objects)
    r.add_post("/api/streams/{name}/objects", object_op)
    r.add_delete("/api/streams/{name}/objects", object_op)
    r.add_delete("/api/streams/{name}/objects/{id}", object_op)
    r.add_patch("/api/streams/{name}/objects/{id}", object_op)
    return app
