"""The aiohttp application of ``unseen serve``: everything on one port.

* ``/`` and ``/static/*``: the browser client (no CDN, nothing external);
* ``POST /api/streams/{name}/offer``: WebRTC signalling (viewer, or ``"publish": true`` for a webcam);
* ``POST /whip/{name}``, ``POST /whep/{name}`` (and ``DELETE`` of their sessions): WHIP/WHEP (:mod:`.whip`);
* ``GET /ws``: the WebSocket control channel (JSON requests ``{"id", "op", ...}``, replies
  ``{"id", "ok", "result"|"error"}``, and ``{"type": "stats"}`` pushes after ``subscribe``);
* ``/api/streams`` (list, add, remove, state) and ``/api/streams/{name}/objects`` (list, click, clear,
  remove, effect);
* ``/healthz/live``, ``/healthz/ready``, ``/metrics``.

Every request passes the access checks of :mod:`.access` (Host, Origin, token) and every message the
validation of :mod:`.protocol` (typed, bounded) before anything acts on it.  Errors are JSON
``{"error": "<cause>; <fix>"}`` with a 4xx status; none of them stops the server.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from . import protocol as p
from .access import Access
from .config import OutputConfig, Settings, SourceConfig
from .live import LiveStream, StreamError
from .memory import release_memory
from .metrics import Metrics
from .protocol import ProtocolError
from .webrtc import Signalling
from .whip import WhipEndpoints

log = logging.getLogger("unseen.server")

STATIC = Path(__file__).resolve().parent.parent / "client" / "static"
try:  # the installed package layout
    import unseen.client as _client

    STATIC = Path(_client.__file__).resolve().parent / "static"
except ImportError:  # pragma: no cover
    pass


class Server:
    """The streams of one ``unseen serve``, their viewers and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.access = Access(settings.security, settings.host)
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
        """A stream fed by a browser's camera (created while answering its offer; the name is checked)."""
        self._check_room(name)
        stream = LiveStream(name, None, self.settings, self.metrics, asyncio.get_running_loop())
        self.streams[name] = stream.start()
        self.metrics.streams.set(len(self.streams))
        return stream

    async def remove(self, name: str) -> None:
        stream = self.stream(name)
        self.streams.pop(name, None)
        for pc in list(stream.viewers):
            await self.signalling.close_connection(pc)
        await stream.aclose()
        self.metrics.streams.set(len(self.streams))
        self._recount_viewers()
        await asyncio.get_running_loop().run_in_executor(None, release_memory)  # the stream's freed buffers

    def _viewers_changed(self, stream: LiveStream) -> None:
        if not stream.closed:
            self.metrics.stream_viewers.labels(stream.name).set(len(stream.viewers))
        self._recount_viewers()
        if stream.config is None and stream.closed and self.streams.get(stream.name) is stream:
            self.streams.pop(stream.name)  # a webcam stream ends with its browser
            self.metrics.streams.set(len(self.streams))
            asyncio.get_running_loop().run_in_executor(None, release_memory)

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
    async def control(self, req: Any) -> Any:
        """Serve one validated request (a model of :mod:`.protocol`) of the WebSocket or REST API."""
        if isinstance(req, p.StreamsRequest):
            return [s.describe() for s in self.streams.values()]
        stream = self.stream(req.stream)
        if isinstance(req, p.StateRequest):
            return stream.describe()
        if isinstance(req, p.ObjectsRequest):
            return stream.objects()
        max_objects = self.settings.limits.max_objects
        if isinstance(req, p.ClickRequest):
            p.check_object(req.object, max_objects)
            oid = await stream.click(req.x, req.y, positive=req.positive, object_id=req.object, pts=req.pts,
                                     frame=req.frame, box=None if req.box is None else tuple(req.box))
            return {"object": oid, "objects": stream.objects()}
        if isinstance(req, p.RemoveRequest):
            p.check_object(req.object, max_objects)
            return {"object": await stream.remove_object(req.object), "objects": stream.objects()}
        if isinstance(req, p.ClearRequest):
            await stream.clear()
            return {"objects": stream.objects()}
        if isinstance(req, p.EffectRequest):
            p.check_object(req.object, max_objects)
            return {"object": await stream.set_effect(req.object, req.effect), "objects": stream.objects()}
        raise ProtocolError(f"{type(req).__name__} is not served here; use one of: {', '.join(p.OPS)}")


# --------------------------------------------------------------------------- HTTP layer
SERVER = web.AppKey("server", Server)


def _server(request: web.Request) -> Server:
    return request.app[SERVER]


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if sockname else None


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Host, Origin and token, before any handler (only /healthz/* is open, for orchestrators' probes)."""
    path = request.path
    if path.startswith("/healthz/"):
        return await handler(request)
    access = _server(request).access
    access.check_host(request.headers.get("Host"))
    access.check_origin(request.headers.get("Origin"), _local_port(request))
    if path != "/" and not path.startswith("/static/"):  # the page itself holds no data
        access.check_token(request.headers.get("Authorization"), request.query.get("token"),
                           metrics=path == "/metrics")
    return await handler(request)


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except (StreamError, ProtocolError) as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            limits = _server(request).settings.limits
            message = (f"request body too large (limit {max(limits.max_message_bytes, limits.max_offer_bytes)} "
                       f"bytes); send a smaller body")
        elif exc.status == 404:
            message = f"no such path {request.path[:100]!r}; see /api/streams, /ws, /metrics, /healthz/live"
        elif exc.status == 405:
            message = f"method {request.method} is not served on {request.path[:100]!r}; see the README's API"
        return web.json_response({"error": message}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - one failed request never stops the server
        log.exception("request %s %s failed", request.method, request.path[:100])
        return web.json_response({"error": f"internal error ({type(exc).__name__}); see the server log"},
                                 status=500)


async def _body(request: web.Request, limit: int, max_string: int = p.MAX_STRING) -> dict[str, Any]:
    """A JSON request body, bounded; only ``application/json`` (a cross-site form or text/plain is refused)."""
    if request.content_type != "application/json":
        raise ProtocolError(f"the body must be application/json, not {request.content_type[:60]!r}; send JSON "
                            f"with 'Content-Type: application/json'", 415)
    if request.content_length is not None and request.content_length > limit:
        raise ProtocolError(f"request body too large ({request.content_length} bytes, limit {limit}); send a "
                            f"smaller body", 413)
    return p.parse_json(await request.read(), limit=limit, max_string=max_string)


def _name(request: web.Request) -> str:
    return p.stream_name(request.match_info["name"])


async def _request(request: web.Request, op: str, body: dict[str, Any] | None = None, **fields: Any) -> Any:
    """A REST call as the WebSocket request it equals, through the same validation and control."""
    server = _server(request)
    msg = dict(body or {}, op=op, **fields)
    if op != "streams":
        msg["stream"] = _name(request)
    return await server.control(p.parse_request(msg))


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    """Open without the token, so it names no streams: only whether the server serves, and how many."""
    server = _server(request)
    body = {"status": "ready" if server.ready else "starting", "streams": len(server.streams)}
    return web.json_response(body, status=200 if server.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=_server(request).metrics.render(), content_type="text/plain", charset="utf-8")


async def list_streams(request: web.Request) -> web.Response:
    return web.json_response(await _request(request, "streams"))


async def add_stream(request: web.Request) -> web.Response:
    server = _server(request)
    body = p.parse(p.StreamBody, await _body(request, server.settings.limits.max_message_bytes), "stream setting")
    access = server.access
    source = body.source(access.source(body.uri))
    outputs = OutputConfig(publish=access.publish(body.publish) if body.publish else None,
                           record=access.record(body.record) if body.record else None)
    stream = await server.add(source, outputs)
    return web.json_response(stream.describe(), status=201)


async def get_stream(request: web.Request) -> web.Response:
    return web.json_response(await _request(request, "state"))


async def delete_stream(request: web.Request) -> web.Response:
    name = _name(request)
    await _server(request).remove(name)
    return web.json_response({"removed": name})


async def objects(request: web.Request) -> web.Response:
    return web.json_response(await _request(request, "objects"))


async def object_op(request: web.Request) -> web.Response:
    """POST .../objects (a click and/or box), DELETE .../objects (clear), DELETE/PATCH .../objects/{id}."""
    limits = _server(request).settings.limits
    oid = request.match_info.get("id")
    fields = {} if oid is None else {"object": p.object_id_from_path(oid, limits.max_objects)}
    if request.method == "POST":
        click = p.parse(p.ClickBody, await _body(request, limits.max_message_bytes), "field")
        return web.json_response(await _request(request, "click", click.model_dump()))
    if request.method == "DELETE":
        return web.json_response(await _request(request, "clear" if oid is None else "remove", **fields))
    body = await _body(request, limits.max_message_bytes)
    return web.json_response(await _request(request, "effect", p.parse(p.EffectBody, body, "field").model_dump(),
                                            **fields))


async def offer(request: web.Request) -> web.Response:
    server = _server(request)
    limits = server.settings.limits
    body = p.parse(p.OfferBody, await _body(request, limits.max_offer_bytes, p.MAX_SDP), "offer")
    name = _name(request)
    sdp = {"sdp": body.sdp, "type": body.type}
    if body.publish:
        answer, _ = await server.signalling.answer(sdp, None, create_webcam=lambda: server.add_webcam(name))
    else:
        answer, _ = await server.signalling.answer(sdp, server.stream(name))
    return web.json_response(answer)


def _echo_id(data: Any) -> Any:
    """The id of a refused message, when it is one a reply may carry."""
    mid = data.get("id") if isinstance(data, dict) else None
    if isinstance(mid, bool) or not isinstance(mid, (int, str)):
        return None
    return mid if (isinstance(mid, str) and len(mid) <= 64) or (isinstance(mid, int) and abs(mid) <= p.MAX_INDEX) \
        else None


class ControlSocket:
    """One WebSocket control connection: validated requests, replies by id, stats subscriptions."""

    def __init__(self, server: Server, ws: web.WebSocketResponse) -> None:
        self.server = server
        self.ws = ws
        self.subscriptions: dict[str, asyncio.Task] = {}
        self.pending: set[asyncio.Task] = set()

    async def reply(self, payload: dict) -> None:
        if not self.ws.closed:
            await self.ws.send_json(payload)

    async def refuse(self, mid: Any, exc: StreamError | ProtocolError) -> None:
        await self.reply({"id": mid, "ok": False, "error": str(exc), "status": exc.status})

    def receive(self, text: str) -> None:
        """A text message: validated now; served on its own task (a slow click never blocks the channel)."""
        data: Any = None
        try:
            data = p.parse_json(text, limit=self.server.settings.limits.max_message_bytes)
            req = p.parse_request(data)
        except ProtocolError as exc:
            self.spawn(self.refuse(_echo_id(data), exc))
            return
        self.spawn(self.handle(req))

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def handle(self, req: Any) -> None:
        try:
            if isinstance(req, p.SubscribeRequest):
                result: Any = self.subscribe(req)
            elif isinstance(req, p.UnsubscribeRequest):
                task = self.subscriptions.pop(req.stream, None)
                if task:
                    task.cancel()
                result = {"unsubscribed": req.stream}
            else:
                result = await self.server.control(req)
            await self.reply({"id": req.id, "ok": True, "result": result})
        except (StreamError, ProtocolError) as exc:
            await self.refuse(req.id, exc)
        except ConnectionResetError:
            pass
        except Exception as exc:  # noqa: BLE001
            log.exception("control message failed")
            await self.reply({"id": req.id, "ok": False, "status": 500,
                              "error": f"internal error ({type(exc).__name__}); see the server log"})

    def subscribe(self, req: p.SubscribeRequest) -> dict:
        name = self.server.stream(req.stream).name
        old = self.subscriptions.pop(name, None)
        if old is not None:
            old.cancel()  # a new period replaces the old one
        self.subscriptions[name] = asyncio.ensure_future(self.push_stats(name, req.every))
        return {"subscribed": name}

    async def push_stats(self, name: str, every: float) -> None:
        """Push the stream's state every ``every`` seconds until it closes or the client unsubscribes."""
        while not self.ws.closed:
            stream = self.server.streams.get(name)
            if stream is None or stream.closed:
                await self.reply({"type": "closed", "stream": name})
                return
            try:
                await self.reply({"type": "stats", "stream": name, "state": stream.describe()})
            except ConnectionResetError:
                return
            except Exception:  # noqa: BLE001 - one failed push must not end the subscription
                log.exception("stats of stream %s could not be pushed", name)
            await asyncio.sleep(every)

    def close(self) -> None:
        for task in list(self.subscriptions.values()) + list(self.pending):
            task.cancel()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = _server(request)
    cap = server.settings.limits.max_message_bytes
    # over 4x the cap the socket is closed (1009, as RFC 6455 says); up to it, a message gets a 413 reply
    ws = web.WebSocketResponse(max_msg_size=4 * cap, heartbeat=20)
    await ws.prepare(request)
    socket = ControlSocket(server, ws)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                socket.receive(message.data)
            elif message.type == WSMsgType.BINARY:
                socket.spawn(socket.refuse(None, ProtocolError("binary messages are not understood; send JSON "
                                                                "text")))
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        socket.close()
    return ws


def create_app(settings: Settings) -> web.Application:
    limits = settings.limits
    app = web.Application(middlewares=[errors, guard],
                          client_max_size=max(limits.max_message_bytes, limits.max_offer_bytes))
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
    WhipEndpoints(server.signalling, limits, find=server.stream, create=server.add_webcam).add_routes(r)
    return app
