"""WebRTC with aiortc: processed video to viewers, a browser webcam as a source, signalling.

* :class:`ProcessedTrack` (a ``MediaStreamTrack``) serves a stream's processed frames to
  one viewer from the stream's latest-frame relay.  With every frame it sends, on the
  viewer's data channel, the track timestamp it gave the frame and the source pts/index
  (and the source's wall-clock time), so the page can tell which source frame it is
  displaying (``requestVideoFrameCallback`` reports the RTP timestamp) and click on it.
* :class:`ProcessedAudioTrack` serves the stream's audio to a viewer whose offer takes audio (aiortc
  encodes it to Opus), released beside the frames it came with, from a bounded drop-oldest queue.
* :func:`consume_webcam` feeds a browser's camera track into a stream's worker, :func:`consume_webcam_audio`
  its microphone track into the stream's audio.
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
from av import AudioFrame, VideoFrame

from unseen.engine.audio import AudioChunk

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


class ProcessedAudioTrack(MediaStreamTrack):
    """The stream's audio, for one viewer: released beside the frames it came with (so it is delayed like
    them), from the viewer's own bounded queue (drop-oldest).  aiortc encodes it to Opus off the loop.
    Audio of another rate or layout than the first sent (a source that came back changed) is dropped."""

    kind = "audio"

    def __init__(self, stream: LiveStream) -> None:
        super().__init__()
        self._queue = stream.audio.viewers.subscribe()
        self._first: AudioChunk | None = None
        self._next = 0  # the sample after the last one sent
        self.sent = 0

    async def recv(self) -> AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            chunk = await self._queue.next()
            if chunk is None:
                self.stop()
                raise MediaStreamError
            if self._first is None:
                self._first = chunk
            if (chunk.format.rate, chunk.format.layout) == (self._first.format.rate, self._first.format.layout) \
                    and chunk.frames:
                break
        rate = chunk.format.rate
        frame = AudioFrame.from_ndarray(chunk.samples, format="s16", layout=chunk.format.layout)
        frame.sample_rate = rate
        pts = max(self._next, round((chunk.seconds - self._first.seconds) * rate))  # gaps kept, never back
        frame.pts, frame.time_base = pts, Fraction(1, rate)
        self._next = pts + chunk.frames
        self.sent += 1
        return frame

    def stop(self) -> None:
        self._queue.close()
        super().stop()


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
    stream.publisher_left()
    log.info("%s: the browser's camera track ended", stream.name)


async def consume_webcam_audio(track: MediaStreamTrack, stream: LiveStream) -> None:
    """Feed a browser's microphone track (aiortc's decoded Opus) into the stream until it ends."""
    while not stream.closed:
        try:
            frame = await track.recv()
        except MediaStreamError:
            break
        if frame.format.name != "s16" or frame.layout.name not in ("mono", "stereo"):
            continue  # aiortc's Opus decoder gives s16 mono/stereo; anything else is not a webcam's
        samples = frame.to_ndarray().reshape(1, -1)  # 20 ms of s16: a copy of a few kB
        stream.feed_audio(samples, frame.sample_rate, frame.layout.name,
                          float(frame.time) if frame.time is not None else None)
    log.info("%s: the browser's audio track ended", stream.name)


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
    """Answers WebRTC offers for viewers and webcam publishers; owns every peer connection.

    A connection holds its slot (a viewer of a stream, or a webcam stream) until it fails, closes,
    stays ``disconnected`` for ``disconnect_grace`` s, or is not ``connected`` within
    ``connect_timeout`` s of the answer; then the slot is freed (a webcam stream is closed)."""

    def __init__(self, ice: IceConfig, max_viewers: int, *, connect_timeout: float = 15.0,
                 disconnect_grace: float = 5.0) -> None:
        self.ice = ice
        self.max_viewers = max_viewers
        self.connect_timeout = connect_timeout
        self.disconnect_grace = disconnect_grace
        self.pcs: set[RTCPeerConnection] = set()
        self.on_viewers_changed: Callable[[LiveStream], None] | None = None

    def _configuration(self) -> RTCConfiguration:
        return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self.ice.stun])

    async def answer(self, offer: Any, stream: LiveStream | None, *,
                     create_webcam: Callable[[], LiveStream] | None = None,
                     on_connection: Callable[[RTCPeerConnection], None] | None = None) -> tuple[dict, LiveStream]:
        """Answer ``offer``: the viewer of ``stream``, or, with ``create_webcam``, a new webcam stream.
        ``on_connection`` gets the answered connection (closing it ends the session and frees its slot)."""
        description = _description(offer)
        if stream is not None and len(stream.viewers) >= self.max_viewers:
            raise StreamError(f"stream {stream.name!r} already has {len(stream.viewers)} viewers (the limit); "
                              f"close a viewer or raise limits.max_viewers", 429)
        pc = RTCPeerConnection(self._configuration())
        self.pcs.add(pc)
        try:
            await _apply_offer(pc, description)
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise StreamError("the offer has no video; add a recvonly video transceiver to the offer")
            if create_webcam is not None:
                if not _sends_video(description.sdp):
                    raise StreamError("the offer sends no video; add the camera track (sendrecv) to the offer")
                stream = create_webcam()
            assert stream is not None
        except Exception:
            await self.close_connection(pc)
            raise
        peer = _Peer(self, pc, stream, publisher=create_webcam is not None)
        try:
            answer = await peer.answer(loopback=self.ice.loopback)
        except Exception:
            await peer.release("answering failed")
            raise
        if on_connection is not None:
            on_connection(pc)
        return answer, stream

    def _changed(self, stream: LiveStream) -> None:
        if self.on_viewers_changed is not None:
            self.on_viewers_changed(stream)

    async def close_connection(self, pc: RTCPeerConnection) -> None:
        self.pcs.discard(pc)
        try:
            await pc.close()
        except Exception:  # noqa: BLE001
            pass

    async def close(self) -> None:
        await asyncio.gather(*(self.close_connection(pc) for pc in list(self.pcs)), return_exceptions=True)


class _Peer:
    """One answered peer connection and the slot it holds: a viewer of ``stream``, or (``publisher``)
    the webcam stream it feeds.  :meth:`release` frees the slot once (failure, close, timeouts)."""

    def __init__(self, signalling: Signalling, pc: RTCPeerConnection, stream: LiveStream, publisher: bool) -> None:
        self.signalling = signalling
        self.pc = pc
        self.stream = stream
        self.publisher = publisher
        self.channel: Any = None
        self.consumer: asyncio.Task | None = None
        self.audio_consumer: asyncio.Task | None = None
        self.released = False
        self._connected = asyncio.Event()
        self._grace: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        pc.addTrack(ProcessedTrack(stream, self.send))
        self.audio_track: ProcessedAudioTrack | None = None
        if any(t.kind == "audio" for t in pc.getTransceivers()):  # the offer takes audio: the stream's goes back
            self.audio_track = ProcessedAudioTrack(stream)
            pc.addTrack(self.audio_track)
        stream.viewers.add(pc)
        signalling._changed(stream)
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        pc.on("iceconnectionstatechange", self._on_ice_state)
        for t in pc.getTransceivers():  # tracks received before the handler existed
            if t.receiver.track is not None:
                self._on_track(t.receiver.track)

    async def answer(self, loopback: bool) -> dict:
        if loopback:
            await add_loopback_candidates(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._watchdog = asyncio.ensure_future(self._expect_connection())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    def send(self, message: dict) -> None:
        """A frame's metadata to the viewer's data channel (dropped while it is not open)."""
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(json.dumps(message))
            except Exception:  # noqa: BLE001 - a closing channel
                pass

    def _on_datachannel(self, channel: Any) -> None:
        self.channel = channel

    def _on_track(self, remote: MediaStreamTrack) -> None:
        if self.publisher and remote.kind == "video" and self.consumer is None:
            self.consumer = asyncio.ensure_future(consume_webcam(remote, self.stream))
        elif self.publisher and remote.kind == "audio" and self.audio_consumer is None:
            self.stream.audio.expect()  # a recording or publisher that starts first takes audio too
            self.audio_consumer = asyncio.ensure_future(consume_webcam_audio(remote, self.stream))

    async def _expect_connection(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.signalling.connect_timeout)
        except asyncio.TimeoutError:
            await self.release(f"not connected within {self.signalling.connect_timeout:g} s of the answer")

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s: peer connection %s", self.stream.name, state)
        if state == "connected":
            self._connected.set()
            self._cancel_grace()
        elif state == "disconnected" and self._grace is None:
            self._grace = asyncio.ensure_future(self._release_after_grace())
        elif state in ("failed", "closed"):
            await self.release(f"connection {state}")

    async def _on_ice_state(self) -> None:
        if self.pc.iceConnectionState == "failed":
            await self.release("ICE failed")

    async def _release_after_grace(self) -> None:
        await asyncio.sleep(self.signalling.disconnect_grace)  # a timer: the grace a disconnect gets
        self._grace = None
        if self.pc.connectionState == "disconnected":
            await self.release(f"disconnected for {self.signalling.disconnect_grace:g} s")

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    async def release(self, why: str) -> None:
        """Free the slot (once): close the connection, forget the viewer, close a webcam stream."""
        if self.released:
            return
        self.released = True
        log.info("%s: releasing a %s (%s)", self.stream.name, "publisher" if self.publisher else "viewer", why)
        self._cancel_grace()
        for task in (self._watchdog, self.consumer, self.audio_consumer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self.signalling.close_connection(self.pc)
        if self.audio_track is not None:
            self.audio_track.stop()  # its queue leaves the stream's audio relay
        self.stream.viewers.discard(self.pc)
        self.signalling._changed(self.stream)
        if self.publisher and not self.stream.closed and self.stream.config is None:
            await self.stream.aclose()  # a webcam stream lives as long as its browser (a configured one stays)
            self.signalling._changed(self.stream)  # now closed: the server forgets it


def _description(offer: Any) -> RTCSessionDescription:
    """The offer as aiortc's description; StreamError (400) for anything else."""
    if not isinstance(offer, dict) or not isinstance(offer.get("sdp"), str) or not isinstance(offer.get("type"), str):
        raise StreamError("the offer must be JSON {\"sdp\": ..., \"type\": \"offer\"} with string values; send "
                          "the browser's RTCPeerConnection.localDescription")
    if offer["type"] != "offer":
        raise StreamError(f"expected an SDP offer, got {offer['type'][:40]!r}; send the offer")
    return RTCSessionDescription(sdp=offer["sdp"], type="offer")


async def _apply_offer(pc: RTCPeerConnection, description: RTCSessionDescription) -> None:
    try:
        await pc.setRemoteDescription(description)
    except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors for SDP it cannot use
        log.info("unusable SDP offer: %r", exc)
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise StreamError(f"the offer's SDP cannot be used ({text}); send the browser's "
                          f"RTCPeerConnection.localDescription unchanged") from None


def _sends_video(sdp: str) -> bool:
    """Whether an offer sends video (a video m-section that is sendrecv or sendonly)."""
    for section in sdp.split("m=")[1:]:
        if section.startswith("video") and ("a=sendrecv" in section or "a=sendonly" in section):
            return True
    return False
