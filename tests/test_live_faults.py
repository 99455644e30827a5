"""Faults a live stream survives: WebRTC peers that never connect, leave or send garbage (aiortc as the
client), an RTSP source killed and restarted or stalled, a publish target that goes away and comes back
(the real GStreamer RTSP server of tests/support/rtsp_server.py).

The RTSP source restart with a click and the session kept is tests/test_rtsp.py's; here: how fast the
output is back, how fast a stall is seen, the publisher's return, and the viewers' slots."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

import test_rtsp as rtsp  # its server script, reader and availability probe
from support.live import SYSTEM_PYTHON, Proc, free_port, running, static_scene, wait_port, write_pngs
from unseen.server import config as cfg
from unseen.server.live import LiveStream, StreamError
from unseen.server.metrics import Metrics
from unseen.server.webrtc import Signalling

pytestmark = pytest.mark.timeout(120)

W, H, FPS = 192, 112, 15  # the RTSP source's GOP is FPS frames: 1 s
GOP_S = 1.0
SYNTH = {"name": "cam", "uri": "synthetic://cam", "loop": True, "width": W, "height": H, "fps": FPS}
CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}


def settings() -> cfg.Settings:
    return cfg.Settings(backends=CLASSICAL, demo=False, delay=2)


def wait_until(predicate, timeout: float, what: str) -> float:
    """Poll another thread's state (nothing to wait on) up to ``timeout`` s; returns the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"{what} within {timeout:g} s"
        time.sleep(0.02)
    return time.monotonic() - t0


async def until(predicate, timeout: float, what: str) -> None:
    """The async twin of wait_until, for state changed on the event loop."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"{what} within {timeout:g} s"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------ WebRTC slots
class Slots:
    """Wakes a waiter whenever Signalling frees or takes a slot (its on_viewers_changed callback)."""

    def __init__(self, signalling: Signalling) -> None:
        self.changed = asyncio.Event()
        signalling.on_viewers_changed = lambda stream: self.changed.set()

    async def until(self, predicate, timeout: float, what: str) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                if not predicate():
                    await self.changed.wait()
        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{what} within {timeout:g} s") from None


async def offer(*, publish: bool = False) -> tuple[RTCPeerConnection, dict]:
    """An aiortc client's offer: a viewer (receive video, a data channel) or a webcam (send video)."""
    pc = RTCPeerConnection()
    if publish:
        pc.addTrack(VideoStreamTrack())
    else:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("meta")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, {"sdp": pc.localDescription.sdp, "type": "offer"}


async def synthetic_stream() -> LiveStream:
    loop = asyncio.get_running_loop()
    stream = await loop.run_in_executor(None, lambda: LiveStream("cam", cfg.SourceConfig(**SYNTH), settings(),
                                                                 Metrics(), loop))
    return stream.start()


@pytest.mark.parametrize("body", [
    {"sdp": None, "type": None}, {"sdp": 1, "type": "offer"}, {"type": "offer"}, [], "v=0",
    {"sdp": "garbage", "type": "offer"}, {"sdp": "v=0\r\n", "type": "offer"}, {"sdp": "v=0", "type": "answer"},
])
def test_a_malformed_offer_is_a_one_line_400(body):
    async def run() -> None:
        signalling = Signalling(cfg.IceConfig(), 2)
        stream = await synthetic_stream()
        try:
            with pytest.raises(StreamError) as info:
                await signalling.answer(body, stream)
            assert info.value.status == 400 and "\n" not in str(info.value) and ";" in str(info.value)
            assert not signalling.pcs and not stream.viewers
        finally:
            await stream.aclose()
    asyncio.run(asyncio.wait_for(run(), 30))


def test_offers_that_never_connect_free_their_slots():
    """Two viewers that never apply the answer, then a webcam publisher that does not either: after the
    connect timeout the viewers' slots are free again and the webcam stream is closed."""
    async def run() -> None:
        signalling = Signalling(cfg.IceConfig(loopback=True), 2, connect_timeout=0.5)
        slots = Slots(signalling)
        stream = await synthetic_stream()
        clients = []
        try:
            for _ in range(2):
                pc, body = await offer()
                clients.append(pc)
                await signalling.answer(body, stream)  # the answer is never applied: ICE never completes
            assert len(stream.viewers) == 2
            with pytest.raises(StreamError) as info:
                await signalling.answer((await offer())[1], stream)
            assert info.value.status == 429
            await slots.until(lambda: not stream.viewers, 10, "both viewer slots freed")
            assert not signalling.pcs

            pc, body = await offer(publish=True)
            clients.append(pc)
            loop = asyncio.get_running_loop()
            _, webcam = await signalling.answer(
                body, None, create_webcam=lambda: LiveStream("phone", None, settings(), Metrics(), loop).start())
            assert webcam.viewers and not webcam.closed
            await slots.until(lambda: webcam.closed and not webcam.viewers, 10, "the webcam stream closed")
            assert webcam.state == "closed" and not signalling.pcs
        finally:
            await asyncio.gather(*(pc.close() for pc in clients))
            await stream.aclose()
    asyncio.run(asyncio.wait_for(run(), 60))


class Viewer:
    """A connected aiortc viewer counting the frames it receives."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.frames = 0
        self.task: asyncio.Task | None = None
        pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self.task = asyncio.ensure_future(self._count(track))

    async def _count(self, track) -> None:
        try:
            while True:
                await track.recv()
                self.frames += 1
        except MediaStreamError:
            pass

    @classmethod
    async def connect(cls, signalling: Signalling, stream: LiveStream) -> "Viewer":
        pc, body = await offer()
        viewer = cls(pc)
        answer, _ = await signalling.answer(body, stream)
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        return viewer


def test_a_viewer_that_vanishes_frees_its_slot_and_the_others_go_on():
    async def run() -> None:
        signalling = Signalling(cfg.IceConfig(loopback=True), 2)
        slots = Slots(signalling)
        stream = await synthetic_stream()
        a = b = None
        try:
            a = await Viewer.connect(signalling, stream)
            b = await Viewer.connect(signalling, stream)
            await until(lambda: a.frames >= 3 and b.frames >= 3, 30, "both viewers receiving")
            await a.pc.close()  # gone: no goodbye beyond what its transport does
            await slots.until(lambda: len(stream.viewers) == 1, 10, "the vanished viewer's slot freed")
            seen = b.frames
            await until(lambda: b.frames >= seen + 10, 15, "the other viewer still receiving")
            assert stream.state == "running" and len(signalling.pcs) == 1
            c = await Viewer.connect(signalling, stream)  # the freed slot takes a new viewer
            await until(lambda: c.frames >= 3, 30, "a new viewer in the freed slot receiving")
            await c.pc.close()
        finally:
            for v in (a, b):
                if v is not None:
                    await v.pc.close()
            await signalling.close()
            await stream.aclose()
    asyncio.run(asyncio.wait_for(run(), 90))


# ------------------------------------------------------------------------------ RTSP faults
@pytest.fixture(scope="module")
def clip_pattern(tmp_path_factory) -> str:
    frames, _, _ = static_scene(W, H, FPS, frames=30)
    return write_pngs(tmp_path_factory.mktemp("frames"), frames)


class RtspSource:
    """The GStreamer RTSP server playing the clip on /clip (stopped, restarted, paused by the test)."""

    def __init__(self, pattern: str, folder) -> None:
        self.port = free_port()
        self.args = [SYSTEM_PYTHON, str(rtsp.SERVER), "--port", str(self.port), "--frames", pattern,
                     "--fps", str(FPS)]
        self.folder = folder
        self.starts = 0
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/clip"

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc(self.args, self.folder / f"source{self.starts}.log")
        wait_port(self.port, 30)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.p.pid, sig)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.alive():
                self.signal(signal.SIGCONT)
            self.proc.stop()


def pull_stream(url: str, read_timeout: float, **outputs) -> LiveStream:
    source = cfg.SourceConfig(name="cam", uri=url, open_timeout=3, read_timeout=read_timeout)
    return LiveStream("cam", source, settings(), Metrics(), asyncio.new_event_loop(),
                      outputs=cfg.OutputConfig(**outputs)).start()


@pytest.mark.rtsp
@pytest.mark.slow
def test_rtsp_source_killed_for_3_s_output_back_within_5_s_plus_a_gop(gst, clip_pattern, tmp_path):
    source = RtspSource(clip_pattern, tmp_path)
    source.start()
    stream = pull_stream(source.url, read_timeout=2)
    try:
        wait_until(lambda: stream.pipeline.frames_out >= 10, 40, "the first processed frames")
        source.signal(signal.SIGKILL)
        source.proc.p.wait(10)
        down = time.monotonic()
        wait_until(lambda: stream.state in ("reconnecting", "connecting"), 10, "the source seen down")
        time.sleep(max(0.0, down + 3.0 - time.monotonic()))  # the scenario: the source is away for 3 s
        out = stream.pipeline.frames_out
        source.start()
        back = wait_until(lambda: stream.pipeline.frames_out >= out + 3, 5 + GOP_S + 5, "output back")
        assert back <= 5 + GOP_S, f"output back {back:.2f} s after the source returned"
        assert stream.state == "running" and stream.reconnects >= 1 and stream.last_error is None
        print(f"\nsource away 3 s: output back {back:.2f} s after it returned (bound {5 + GOP_S:g} s)")
    finally:
        stream.close(timeout=5)
        source.stop()


@pytest.mark.rtsp
@pytest.mark.slow
def test_a_stalled_rtsp_source_is_seen_within_its_read_timeout(gst, clip_pattern, tmp_path):
    read_timeout, margin = 1.5, 1.0
    source = RtspSource(clip_pattern, tmp_path)
    source.start()
    stream = pull_stream(source.url, read_timeout=read_timeout)
    try:
        wait_until(lambda: stream.pipeline.frames_out >= 10, 40, "the first processed frames")
        source.signal(signal.SIGSTOP)  # the connection stays open, nothing comes
        seen = wait_until(lambda: stream.state == "reconnecting", read_timeout + margin + 5, "the stall seen")
        assert seen <= read_timeout + margin, f"stall seen after {seen:.2f} s (read timeout {read_timeout:g} s)"
        error = stream.describe()["error"]
        assert error.startswith("source dropped or stalled") and "server log" in error
        source.signal(signal.SIGCONT)
        out = stream.pipeline.frames_out
        wait_until(lambda: stream.pipeline.frames_out >= out + 5, 30, "output back after the stall")
        print(f"\nstall seen {seen:.2f} s after SIGSTOP (read timeout {read_timeout:g} s)")
    finally:
        stream.close(timeout=5)
        source.stop()


def read_when_back(url: str, n: int, timeout: float) -> list[np.ndarray]:
    """``n`` frames from ``url``, retrying while nothing is published there yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            frames, _ = rtsp.read_frames(url, n, timeout=10)
            if len(frames) >= n:
                return frames
        except Exception as exc:  # noqa: BLE001 - not published (yet): the relay refuses or sends nothing
            if time.monotonic() > deadline:
                raise AssertionError(f"no {n} frames at {url} within {timeout:g} s ({exc})") from None
        if time.monotonic() > deadline:
            raise AssertionError(f"no {n} frames at {url} within {timeout:g} s")


@pytest.mark.rtsp
@pytest.mark.slow
def test_a_publish_target_that_goes_away_and_comes_back_gets_the_stream_again(gst, tmp_path):
    port = free_port()
    relay = [SYSTEM_PYTHON, str(rtsp.SERVER), "--port", str(port), "--relay"]
    out_url = f"rtsp://127.0.0.1:{port}/out"
    loop = asyncio.new_event_loop()
    stream = LiveStream("cam", cfg.SourceConfig(**SYNTH), settings(), Metrics(), loop,
                        outputs=cfg.OutputConfig(publish=f"rtsp://127.0.0.1:{port}/in"))
    try:
        with running(relay, tmp_path / "relay1.log", port=port) as first:
            stream.start()
            assert len(read_when_back(out_url, 10, 30)) == 10
            first.stop(sig=signal.SIGKILL)
        out = stream.pipeline.frames_out
        wait_until(lambda: stream.pipeline.frames_out >= out + 10, 10, "processing going on without the target")
        with running(relay, tmp_path / "relay2.log", port=port):
            frames = read_when_back(out_url, 10, 40)
        assert len(frames) == 10 and frames[-1].shape[:2] == (H, W)
        assert stream.state == "running"
        [publisher] = stream.sinks
        assert publisher.sink.connects >= 2, "the publisher reconnected"
    finally:
        stream.close(timeout=5)
        loop.close()
