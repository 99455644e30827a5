"""WHIP ingest (RFC 9725) and WHEP egress (draft-ietf-wish-whep), beside the JSON signalling.

* ``POST /whip/{name}``, an ``application/sdp`` offer that sends video -> ``201 Created``, the answer
  (``application/sdp``) and ``Location: /whip/{name}/{session}``.  The publisher feeds stream ``name``:
  one created for it (as a browser webcam's: it ends when the publisher leaves), or a configured
  ``whip://`` source of that name (it stays).  One publisher per stream.
* ``POST /whep/{name}``: a viewer of an existing stream, the same way (``/whep/{name}/{session}``).
* ``DELETE`` on a session's Location ends it and frees its slot; ``PATCH`` (trickle ICE, ICE restart)
  answers 405: the answer already holds every candidate, gathered before answering.

Host, Origin and token are checked by the app's middleware as for every request; the offer is answered
by :class:`.webrtc.Signalling` (its viewer limit, connect timeout and slot release).  A session lives in
the table while its connection does (so the table is bounded by the slots).
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal

from aiohttp import web
from aiortc import RTCPeerConnection

from . import protocol as p
from .config import LimitsConfig
from .live import LiveStream, StreamError
from .protocol import ProtocolError
from .webrtc import Signalling

log = logging.getLogger("unseen.whip")

SDP = "application/sdp"
Kind = Literal["whip", "whep"]


@dataclass(frozen=True)
class Session:
    """One WHIP publisher or WHEP viewer: its id (the last segment of its Location) and connection."""

    id: str
    kind: Kind
    stream: str
    pc: RTCPeerConnection

    @property
    def location(self) -> str:
        return f"/{self.kind}/{self.stream}/{self.id}"


class WhipEndpoints:
    """The WHIP and WHEP resources of one server: answers offers, keeps the open sessions, ends them."""

    def __init__(self, signalling: Signalling, limits: LimitsConfig, *, find: Callable[[str], LiveStream],
                 create: Callable[[str], LiveStream]) -> None:
        self.signalling = signalling
        self.limits = limits
        self.find = find  # an open stream by name, else StreamError 404
        self.create = create  # a new stream fed by its publisher (StreamError 409/429 when it cannot be)
        self.sessions: dict[str, Session] = {}
        self._fed: set[str] = set()  # streams with a publisher (claimed while its offer is answered)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for kind, start in (("whip", self.publish), ("whep", self.watch)):
            router.add_post(f"/{kind}/{{name}}", start)
            router.add_delete(f"/{kind}/{{name}}/{{session}}", partial(self.end, kind))
            router.add_patch(f"/{kind}/{{name}}/{{session}}", self.patch)

    # ------------------------------------------------------------------ resources
    async def publish(self, request: web.Request) -> web.Response:
        offer = await self._offer(request)
        name = p.stream_name(request.match_info["name"])
        opened: list[RTCPeerConnection] = []
        claimed: list[LiveStream] = []  # the stream, once this offer holds the publisher's place
        try:
            answer, _ = await self.signalling.answer({"sdp": offer.sdp, "type": "offer"}, None,
                                                     create_webcam=lambda: self._claim(name, claimed),
                                                     on_connection=opened.append)
        except BaseException:
            if claimed:
                self._fed.discard(name)
            raise
        return self._created(self._open("whip", name, opened[0]), answer["sdp"])

    async def watch(self, request: web.Request) -> web.Response:
        offer = await self._offer(request)
        stream = self.find(p.stream_name(request.match_info["name"]))
        opened: list[RTCPeerConnection] = []
        answer, _ = await self.signalling.answer({"sdp": offer.sdp, "type": "offer"}, stream,
                                                 on_connection=opened.append)
        return self._created(self._open("whep", stream.name, opened[0]), answer["sdp"])

    async def end(self, kind: Kind, request: web.Request) -> web.Response:
        session = self._session(kind, request)
        self._forget(session)
        await self.signalling.close_connection(session.pc)  # the peer frees its slot as the connection closes
        log.info("%s: %s session ended by DELETE", session.stream, session.kind.upper())
        return web.Response(status=200)

    async def patch(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "trickle ICE and ICE restarts are not supported (the answer holds every "
                                           "candidate); send the complete offer in the POST"},
                                 status=405, headers={"Allow": "DELETE"})

    # ------------------------------------------------------------------ helpers
    async def _offer(self, request: web.Request) -> p.SdpOffer:
        if request.content_type != SDP:
            raise ProtocolError(f"the body must be {SDP}, not {request.content_type[:60]!r}; send the SDP offer "
                                f"with 'Content-Type: {SDP}'", 415)
        limit = self.limits.max_offer_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ProtocolError(f"SDP of {request.content_length} bytes is over the {limit}-byte limit; send a "
                                f"smaller offer", 413)
        return p.parse_sdp(await request.read(), limit=limit)

    def _claim(self, name: str, claimed: list[LiveStream]) -> LiveStream:
        """The stream a publisher feeds (appended to ``claimed``): a configured ``whip://`` one without a
        publisher, or a new one."""
        if name in self._fed:
            raise StreamError(f"stream {name!r} already has a publisher; DELETE its WHIP session first", 409)
        try:
            stream = self.find(name)
        except StreamError as exc:
            if exc.status != 404:
                raise
            stream = self.create(name)
        else:
            if stream.kind != "whip":
                raise StreamError(f"stream {name!r} has its own source; publish to another name, or configure "
                                  f"it with uri = 'whip://'", 409)
        self._fed.add(name)
        claimed.append(stream)
        return stream

    def _open(self, kind: Kind, stream: str, pc: RTCPeerConnection) -> Session:
        session = Session(secrets.token_urlsafe(18), kind, stream, pc)
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._forget(session)

        log.info("%s: %s session opened", stream, kind.upper())
        return session

    def _forget(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None and session.kind == "whip":
            self._fed.discard(session.stream)

    def _session(self, kind: Kind, request: web.Request) -> Session:
        name = p.stream_name(request.match_info["name"])
        session = self.sessions.get(request.match_info["session"])
        if session is None or session.kind != kind or session.stream != name:
            raise StreamError(f"no {kind.upper()} session at {request.path[:120]!r} (it ended, or never "
                              f"existed); use the Location the POST returned", 404)
        return session

    @staticmethod
    def _created(session: Session, sdp: str) -> web.Response:
        return web.Response(status=201, body=sdp.encode(), content_type=SDP, headers={"Location": session.location})
