"""WebRTC with aiortc: processed video to viewers, a browser webcam as a source, signalling.

* :class:`ProcessedTrack` (a ``MediaStreamTrack``) serves a stream's processed frames to
  one viewer from the stream's latest-frame relay.  With every frame it sends, on the
  viewer's data channel, the track timestamp it gave the frame and the source pts/index
  (and the source's wall-clock time), so the page can tell which source frame it is
  displaying (``requestVideoFrameCallback`` reports the RTP timestamp) and click on it.
* :func:`consume_webcam` feeds a browser's camera track into a stream's worker.
* :class:`Signalling` answers offers; ``ice.loopback`` adds a 127.0.0.1 host candidate
  per connection (aioice skips loopback when it gathers), for same-host browsers and tests.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from fractions import Fraction
from typing import Any, Callable

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from .config import IceConfig
from .live import LiveStream, StreamError

log = logging.getLogger("unseen.webrtc")

CLOCK = 90000


class ProcessedTrack(MediaStreamTrack):
    """The processed video of one stream, for one viewer (newest frame only: a slow viewer skips)."""

    kind = "video"

    def __init__(self, stream: LiveStream, on_frame: Callable[[dict], None] | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.on_frame = on_frame
        self._seq = 0
        self._start: float | None = None
        self._last_ts = -1
        self.sent = 0

    async def recv(self) -> VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            try:
                self._seq, view = await self.stream.relay.next(self._seq, timeout=1.0)
            except asyncio.TimeoutError:
                continue  # the source is away: keep the connection, wait for frames
            if view is None:
                self.stop()
                raise MediaStreamError
            break
        frame = VideoFrame.from_ndarray(view.image, format="rgb24")
        now = time.monotonic()
        if self._start is None:
            self._start = now
        # the track's timestamps follow the wall clock (as aiortc's own tracks do); their jitter
        # makes each frame's RTP timestamp unique, which the page uses to find its metadata
        ts = max(self._last_ts + 1, int((now - self._start) * CLOCK))
        self._last_ts = ts
        frame.pts, frame.time_base = ts, Fraction(1, CLOCK)
        self.sent += 1
        if self.on_frame is not None:
            self.on_frame({"type": "frame", "ts": ts, "pts": view.pts, "index": view.index,
                           "src": round(view.source_time, 4), "sent": round(time.time(), 4),
                           "degraded": view.degraded})
        return frame


async def consume_webcam(track: MediaStreamTrack, stream: LiveStream) -> None:
    """Feed a browser's camera track into the stream until it ends."""
    loop = asyncio.get_running_loop()
    while not stream.closed:
        try:
            frame = await track.recv()
        except MediaStreamError:
            break
        image = await loop.run_in_executor(None, lambda f=frame: f.to_ndarray(format="rgb24"))
        stream.feed(image, float(frame.time) if frame.time is not None else None)
    log.info("%s: the browser's camera track ended", stream.name)


async def add_loopback_candidates(pc: RTCPeerConnection) -> None:
    """Gather a 127.0.0.1 host candidate on each of the connection's ICE transports.

    aioice leaves loopback out of its host addresses; this adds it for this connection
    only (a setting, ``ice.loopback``), before aiortc gathers the rest."""
    connections = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport or transceiver.receiver.transport
        if dtls is not None:
            connections.append(dtls.transport.iceGatherer._connection)
    if pc.sctp is not None:
        connections.append(pc.sctp.transport.transport.iceGatherer._connection)
    seen = set()
    for conn in connections:
        if id(conn) in seen or conn._local_candidates_start:
            continue
        seen.add(id(conn))
        for component in conn._components:
            conn._local_candidates += await conn.get_component_candidates(component=component,
                                                                          addresses=["127.0.0.1"])


class Signalling:
    """Answers WebRTC offers for viewers and webcam publishers; owns every peer connection."""

    def __init__(self, ice: IceConfig, max_viewers: int) -> None:
        self.ice = ice
        self.max_viewers = max_viewers
        self.pcs: set[RTCPeerConnection] = set()
        self.on_viewers_changed: Callable[[LiveStream], None] | None = None

    def _configuration(self) -> RTCConfiguration:
        return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self.ice.stun])

    async def answer(self, offer: dict, stream: LiveStream | None, *,
                     create_webcam: Callable[[], LiveStream] | None = None) -> tuple[dict, LiveStream]:
        """Answer ``offer``: the viewer of ``stream``, or, with ``create_webcam``, a new webcam stream."""
        try:
            description = RTCSessionDescription(sdp=str(offer["sdp"]), type=str(offer["type"]))
        except (KeyError, TypeError) as exc:
            raise StreamError("the offer must be JSON {\"sdp\": ..., \"type\": \"offer\"}; send the browser's "
                              "RTCPeerConnection.localDescription") from exc
        if description.type != "offer":
            raise StreamError(f"expected an SDP offer, got {description.type!r}; send the offer")
        if stream is not None and len(stream.viewers) >= self.max_viewers:
            raise StreamError(f"stream {stream.name!r} already has {len(stream.viewers)} viewers (the limit); "
                              f"close a viewer or raise limits.max_viewers", 429)
        pc = RTCPeerConnection(self._configuration())
        self.pcs.add(pc)
        state: dict[str, Any] = {"channel": None, "tasks": []}
        try:
            await pc.setRemoteDescription(description)
            if create_webcam is not None:
                if not _sends_video(description.sdp):
                    raise StreamError("the offer sends no video; add the camera track (sendrecv) to the offer")
                stream = create_webcam()
            assert stream is not None
            track = ProcessedTrack(stream, lambda meta: _send(state, meta))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise StreamError("the offer has no video; add a recvonly video transceiver to the offer")
            pc.addTrack(track)
        except Exception:
            await self._close(pc)
            raise
        stream.viewers.add(pc)
        self._changed(stream)

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            state["channel"] = channel

        @pc.on("track")
        def on_track(remote) -> None:
            if create_webcam is not None and remote.kind == "video" and not state["tasks"]:
                state["tasks"].append(asyncio.ensure_future(consume_webcam(remote, stream)))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("%s: peer connection %s", stream.name, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self._close(pc)
                stream.viewers.discard(pc)
                self._changed(stream)
                if create_webcam is not None and not stream.closed:
                    await stream.aclose()  # a webcam stream lives as long as its browser

        # tracks received before the handler existed
        for t in pc.getTransceivers():
            if create_webcam is not None and t.receiver.track is not None and t.kind == "video" \
                    and not state["tasks"]:
                state["tasks"].append(asyncio.ensure_future(consume_webcam(t.receiver.track, stream)))
        if self.ice.loopback:
            await add_loopback_candidates(pc)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}, stream

    def _changed(self, stream: LiveStream) -> None:
        if self.on_viewers_changed is not None:
            self.on_viewers_changed(stream)

    async def _close(self, pc: RTCPeerConnection) -> None:
        self.pcs.discard(pc)
        try:
            await pc.close()
        except Exception:  # noqa: BLE001
            pass

    async def close(self) -> None:
        await asyncio.gather(*(self._close(pc) for pc in list(self.pcs)), return_exceptions=True)


def _sends_video(sdp: str) -> bool:
    """Whether an offer sends video (a video m-section that is sendrecv or sendonly)."""
    for section in sdp.split("m=")[1:]:
        if section.startswith("video") and ("a=sendrecv" in section or "a=sendonly" in section):
            return True
    return False


def _send(state: dict, message: dict) -> None:
    channel = state.get("channel")
    if channel is not None and channel.readyState == "open":
        try:
            channel.send(json.dumps(message))
        except Exception:  # noqa: BLE001 - a closing channel
            pass
