"""Audio on the live path: the source's audio leaves with the video, delayed by the same D frames.

A 50 fps clip (160x96) whose white flashes start on the same frame as a 1 kHz beep is served by GStreamer's
RTSP server (tests/support/rtsp_server.py --file) into ``unseen serve``, which republishes it over RTSP to an
``ffmpeg -rtsp_flags listen`` receiver (it records what it receives, stream copy) and records it itself.  In
each output every flash is matched with its beep: the beep's first sample is within 20 ms of the flash frame
(40 ms in the receiver's file: see RECEIVED_TOLERANCE).
G.711 in: RTSP out copies it, mp4 gets AAC, mkv 16-bit PCM; AAC and Opus are copied.
In process: a WebRTC viewer (aiortc) gets an audio track that carries the beeps, and at the hand-off to the
viewers each beep is out with its flash frame, not ahead of the frames; a webcam publisher's microphone comes
back to it and into its recording; a looped file's audio follows its frames; a source whose audio codec cannot
be decoded, or whose packets do not decode, keeps its video with one warning line.
"""
from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

from unseen.engine.audio import AudioChunk, AudioFormat, AudioInput
from unseen.engine.media import Source
from unseen.engine.streams import AudioLine
from support.live import SYSTEM_PYTHON, Proc, free_port, running, unseen_cmd, wait_port, wait_state
from unseen.server import config as cfg
from unseen.server.live import LiveStream
from unseen.server.metrics import Metrics
from unseen.server.webrtc import Signalling

FFMPEG = "/usr/bin/ffmpeg"
SERVER = Path(__file__).parent / "support" / "rtsp_server.py"
FPS = 50
W, H = 160, 96
TOLERANCE = 0.020  # seconds between a flash frame and its beep's first sample ...
RECEIVED_TOLERANCE = 0.040  # ... in what an RTSP receiver recorded: it aligns audio with video by the RTCP sender
# reports, whose RTP time ffmpeg's RTP muxer (our publisher's) derives from the wall clock at sending, not from the
# packets' timestamps; each report so moves the streams apart by the difference of their send delays (on a loaded
# 2-core CI machine, once: -21.9 and +22.1 ms among 0-8 ms).  40 ms stays under the 45 ms by which sound ahead of
# the picture becomes noticeable (ITU-R BT.1359); our own recording is held to 20 ms
CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}
AUDIO_CODECS = {"pcmu": ("pcm_mulaw", 8000), "pcma": ("pcm_alaw", 8000), "aac": ("aac", 48000),
                "opus": ("libopus", 48000)}


def _missing() -> str | None:
    if not Path(FFMPEG).exists():
        return f"{FFMPEG} not found; install Debian's ffmpeg (tests/support/ci_services.sh)"
    return None


@pytest.fixture(scope="module")
def ffmpeg():
    reason = _missing()
    if reason:
        pytest.skip(reason)


def make_clip(path: Path, seconds: int, period: int, audio: str) -> Path:
    """Black 160x96 frames at 50 fps with one white frame at 1.5 s, 1.5 + period s, ...; a 0.2 s 1 kHz beep
    starting on the same sample as each white frame; H.264 without B-frames, a keyframe every second (a reader
    starts on one: never on a flash), and ``audio`` in Matroska."""
    codec, rate = AUDIO_CODECS[audio]
    video = (f"color=c=black:s={W}x{H}:r={FPS}:d={seconds},drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:"
             f"enable='eq(mod(n\\,{period * FPS})\\,{FPS * 3 // 2})'")
    beep = f"aevalsrc='if(between(mod(t\\,{period})\\,1.5\\,1.7)\\,0.8*sin(2*PI*1000*t)\\,0)':s={rate}:d={seconds}"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi",
                    "-i", beep, "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
                    "-g", str(FPS), "-pix_fmt", "yuv420p", "-c:a", codec, str(path)], check=True, timeout=120)
    return path


def flashes_and_beeps(path: Path) -> tuple[list[float], list[float]]:
    """The times of each flash's first white frame and of each beep's first sample (after 0.5 s of quiet)."""
    flashes, beeps = [], []
    white, last_loud = False, -1.0
    with av.open(str(path)) as c:
        for frame in c.decode(*c.streams):
            t = float(frame.pts * frame.time_base)
            if isinstance(frame, av.VideoFrame):
                now_white = frame.to_ndarray(format="gray").mean() > 128
                if now_white and not white:
                    flashes.append(t)
                white = now_white
                continue
            samples = frame.to_ndarray().astype(np.float64)
            if frame.format.name.startswith("s16"):
                samples /= 32768
            loud = np.nonzero(np.abs(samples.reshape(-1, frame.samples) if frame.format.is_planar
                                     else samples.reshape(frame.samples, -1).T).max(axis=0) > 0.3)[0]
            if len(loud):
                first = t + loud[0] / frame.sample_rate
                if first - last_loud > 0.5:
                    beeps.append(first)
                last_loud = t + loud[-1] / frame.sample_rate
    return flashes, beeps


def offsets(path: Path) -> tuple[list[float], list[float]]:
    """Each flash's offset to the nearest beep's first sample, and the flashes."""
    flashes, beeps = flashes_and_beeps(path)
    assert beeps, f"{path.name}: no beep in the audio"
    return [min(beeps, key=lambda b: abs(b - f)) - f for f in flashes], flashes


def check_sync(path: Path, events: int, tolerance: float = TOLERANCE) -> None:
    got, flashes = offsets(path)
    ms = [round(o * 1000, 1) for o in got]
    assert len(got) >= events, f"{path.name}: {len(got)} flashes measured, expected {events} (at {flashes})"
    assert max(abs(o) for o in got) <= tolerance, f"{path.name}: flash -> beep offsets (ms) {ms}"


def serve_through_rtsp(tmp_path: Path, clip: Path, audio: str, record: str, seconds: float) -> tuple[Path, Path]:
    """``clip`` served by GStreamer's RTSP server into ``unseen serve``, which republishes it to an ffmpeg
    RTSP receiver and records it to ``record``; returns (received, recorded) once the clip has played."""
    src_port, out_port, http_port = free_port(), free_port(), free_port()
    received, recorded = tmp_path / "received.mkv", tmp_path / record
    base = f"http://127.0.0.1:{http_port}"
    env = {
        "UNSEEN_SOURCES": json.dumps([{"name": "cam", "uri": f"rtsp://127.0.0.1:{src_port}/file",
                                       "open_timeout": 5, "read_timeout": 4}]),
        "UNSEEN_OUTPUTS__CAM__PUBLISH": f"rtsp://127.0.0.1:{out_port}/live",
        "UNSEEN_OUTPUTS__CAM__RECORD": str(recorded),
        "UNSEEN_BACKENDS__SEGMENTER": "classical", "UNSEEN_BACKENDS__PROPAGATOR": "classical",
        "UNSEEN_BACKENDS__INPAINTER": "classical", "UNSEEN_DELAY": "3",
    }
    receiver = [FFMPEG, "-hide_banner", "-loglevel", "warning", "-y", "-rtsp_flags", "listen", "-rtsp_transport",
                "tcp", "-i", f"rtsp://127.0.0.1:{out_port}/live", "-c", "copy", str(received)]
    source = [SYSTEM_PYTHON, str(SERVER), "--port", str(src_port), "--file", str(clip), "--audio", audio]
    with running(receiver, tmp_path / "receiver.log") as rx, \
            running(source, tmp_path / "source.log", port=src_port):
        serve = Proc(unseen_cmd("serve", "--port", str(http_port)), tmp_path / "serve.log", env=env)
        try:
            wait_port(http_port, 60)
            # the clip plays once; then the source ends and the stream starts reconnecting
            state = wait_state(base, lambda s: s["frames_out"] > 0 and s["state"] in ("reconnecting", "connecting"),
                               seconds + 60, "the clip to play to its end")
            assert state["audio"]["codec"] == AUDIO_CODECS[audio][0].replace("libopus", "opus"), state["audio"]
            assert state["audio"]["chunks_out"] > 0 and state["audio"]["error"] is None, state["audio"]
        finally:
            serve.stop()  # SIGTERM: the recording is finished, the publisher sends TEARDOWN
        rx.p.wait(30)  # the receiver ends with its publisher and writes its file's index
    assert received.exists(), f"the RTSP receiver wrote nothing: {rx.tail()}\n{serve.tail()}"
    assert recorded.exists(), serve.tail()
    return received, recorded


@pytest.mark.rtsp
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rtsp_g711_in_rtsp_and_mp4_out_keep_every_beep_on_its_flash_for_60_s(gst, ffmpeg, tmp_path):
    clip = make_clip(tmp_path / "clip.mkv", 64, 5, "pcmu")
    src_flashes, src_beeps = flashes_and_beeps(clip)
    assert len(src_flashes) == len(src_beeps) == 13
    received, recorded = serve_through_rtsp(tmp_path, clip, "pcmu", "recorded.mp4", 64)
    with av.open(str(received)) as c:
        assert c.streams.audio[0].codec_context.name == "pcm_mulaw"  # RTSP out: G.711 copied
    with av.open(str(recorded)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"  # mp4: AAC
    check_sync(recorded, 12)
    check_sync(received, 12, RECEIVED_TOLERANCE)  # the first flash may come before the receiver took the stream


@pytest.mark.rtsp
@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("audio, record, recorded_codec", [("aac", "recorded.mkv", "aac"),
                                                           ("opus", "recorded.mp4", "opus"),
                                                           ("pcma", "recorded.mkv", "pcm_s16le")])
def test_rtsp_aac_opus_and_alaw_in_are_copied_out_in_sync(gst, ffmpeg, tmp_path, audio, record,
                                                          recorded_codec):
    clip = make_clip(tmp_path / "clip.mkv", 12, 2, audio)
    received, recorded = serve_through_rtsp(tmp_path, clip, audio, record, 12)
    name = AUDIO_CODECS[audio][0].replace("libopus", "opus")
    with av.open(str(received)) as c:
        assert c.streams.audio[0].codec_context.name == name
    with av.open(str(recorded)) as c:
        assert c.streams.audio[0].codec_context.name == recorded_codec
    check_sync(recorded, 5)
    check_sync(received, 5, RECEIVED_TOLERANCE)


# ------------------------------------------------------------------------------ in process
def settings(delay: int = 2) -> cfg.Settings:
    return cfg.Settings(backends=CLASSICAL, demo=False, delay=delay)


async def file_stream(path: Path, delay: int = 2) -> LiveStream:
    loop = asyncio.get_running_loop()
    source = cfg.SourceConfig(name="cam", uri=str(path), loop=True)
    stream = await loop.run_in_executor(None, lambda: LiveStream("cam", source, settings(delay), Metrics(), loop))
    return stream.start()


class AudioViewer:
    """An aiortc viewer that asks for video and audio and keeps the audio it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.samples: list[np.ndarray] = []
        self.rate = 0
        self.enough = asyncio.Event()
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            asyncio.ensure_future(self._keep(track))

    async def _keep(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.rate = frame.sample_rate
                self.samples.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])
                if sum(len(s) for s in self.samples) >= 3 * self.rate:
                    self.enough.set()
        except MediaStreamError:
            pass

    async def connect(self, signalling: Signalling, stream: LiveStream) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer, _ = await signalling.answer({"sdp": self.pc.localDescription.sdp, "type": "offer"}, stream)
        await self.pc.setRemoteDescription(RTCSessionDescription(**answer))


@pytest.mark.slow
def test_a_webrtc_viewer_gets_the_streams_audio(ffmpeg, tmp_path):
    clip = make_clip(tmp_path / "clip.mkv", 4, 2, "aac")

    async def run() -> None:
        signalling = Signalling(cfg.IceConfig(loopback=True), 2)
        stream = await file_stream(clip)
        viewer = AudioViewer()
        try:
            await viewer.connect(signalling, stream)
            await asyncio.wait_for(viewer.enough.wait(), 45)
        finally:
            await viewer.pc.close()
            await signalling.close()
            await stream.aclose()
        audio = np.concatenate(viewer.samples).astype(np.float64) / 32768
        assert viewer.rate == 48000  # Opus over WebRTC
        assert np.abs(audio).max() > 0.3, "the beeps never reached the viewer"
        assert stream.describe()["audio"]["codec"] == "aac"
    asyncio.run(asyncio.wait_for(run(), 90))


class ToneTrack(AudioStreamTrack):
    """A microphone playing a 440 Hz tone (aiortc's paced silence, filled)."""

    async def recv(self):
        frame = await super().recv()
        t = (frame.pts + np.arange(frame.samples)) / frame.sample_rate
        tone = (0.8 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        return _with_samples(frame, tone)


def _with_samples(frame, samples: np.ndarray):
    out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    out.sample_rate, out.pts, out.time_base = frame.sample_rate, frame.pts, frame.time_base
    return out


@pytest.mark.slow
def test_a_webcams_audio_comes_back_to_it_over_webrtc(tmp_path):
    """A browser-like aiortc publisher sends camera and microphone; the processed stream it gets back
    carries its microphone's tone, the stream reports the webcam's Opus audio, and its recording (mp4) has
    the tone as AAC."""
    recorded = tmp_path / "webcam.mp4"

    async def run() -> None:
        signalling = Signalling(cfg.IceConfig(loopback=True), 2)
        loop = asyncio.get_running_loop()
        viewer = AudioViewer()
        viewer.pc.addTrack(VideoStreamTrack())
        viewer.pc.addTrack(ToneTrack())
        streams: list[LiveStream] = []
        try:
            await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
            answer, stream = await signalling.answer(
                {"sdp": viewer.pc.localDescription.sdp, "type": "offer"}, None,
                create_webcam=lambda: LiveStream("phone", None, settings(), Metrics(), loop,
                                                 outputs=cfg.OutputConfig(record=str(recorded))).start())
            streams.append(stream)
            await viewer.pc.setRemoteDescription(RTCSessionDescription(**answer))
            await asyncio.wait_for(viewer.enough.wait(), 45)
        finally:
            await viewer.pc.close()
            await signalling.close()
            for stream in streams:
                await stream.aclose()
        audio = np.concatenate(viewer.samples).astype(np.float64) / 32768
        assert np.abs(audio).max() > 0.3, "the microphone's tone never came back"
        assert streams[0].describe()["audio"]["codec"] == "opus"
    asyncio.run(asyncio.wait_for(run(), 90))
    with av.open(str(recorded)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        loudest = max(float(np.abs(f.to_ndarray()).max()) for f in c.decode(audio=0))
    assert loudest > 0.3, "the recording has no tone"


@pytest.mark.slow
def test_g711_recorded_to_mkv_stays_uncompressed_and_in_sync(ffmpeg, tmp_path):
    """PyAV's Matroska muxer refuses G.711 as it is: the recording keeps it as 16-bit PCM (no lossy step)."""
    clip = make_clip(tmp_path / "clip.mkv", 6, 2, "pcmu")
    recorded = tmp_path / "recorded.mkv"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        source = cfg.SourceConfig(name="cam", uri=str(clip), loop=False)
        stream = await loop.run_in_executor(None, lambda: LiveStream(
            "cam", source, settings(), Metrics(), loop, outputs=cfg.OutputConfig(record=str(recorded))))
        stream.start()
        try:
            deadline = time.monotonic() + 40
            while stream.state != "ended":
                assert time.monotonic() < deadline, f"the file did not end: {stream.describe()}"
                await asyncio.sleep(0.1)
        finally:
            await stream.aclose()
    asyncio.run(asyncio.wait_for(run(), 60))
    with av.open(str(recorded)) as c:
        assert c.streams.audio[0].codec_context.name == "pcm_s16le"
    check_sync(recorded, 3)


def beep_onsets(chunks: list[AudioChunk]) -> list[Fraction]:
    """The stream times (s) of each beep's first loud sample in ``chunks`` (after 0.5 s of quiet)."""
    onsets, last_loud = [], Fraction(-1)
    for chunk in chunks:
        loud = np.nonzero(np.abs(chunk.samples.reshape(-1, chunk.format.channels)[:, 0]) > 0.3 * 32768)[0]
        if len(loud):
            first = chunk.seconds + Fraction(int(loud[0]), chunk.format.rate)
            if first - last_loud > Fraction(1, 2):
                onsets.append(first)
            last_loud = chunk.seconds + Fraction(int(loud[-1]), chunk.format.rate)
    return onsets


@pytest.mark.slow
def test_viewers_get_each_beep_together_with_its_flash_frame(ffmpeg, tmp_path):
    """At the hand-off to the viewers, the beep has arrived when its flash frame is out, and no audio more
    than two frames ahead of the frames: the audio leaves the delay line (10 frames here) with its frames."""
    clip = make_clip(tmp_path / "clip.mkv", 6, 2, "pcmu")
    frame = Fraction(1, FPS)

    async def run() -> list[tuple[Fraction, list[Fraction], Fraction]]:
        stream = await file_stream(clip, delay=10)
        audio = stream.audio.viewers.subscribe()
        seen, delivered, seq, white = [], [], 0, False
        try:
            while len(seen) < 3:
                seq, view = await stream.relay.next(seq, timeout=20)
                assert view is not None, "the stream closed"
                now_white = view.image.mean() > 128
                delivered += audio.drain()
                if now_white and not white:  # a flash frame, with the audio handed out up to it
                    seen.append((view.pts * Fraction(1, 90000), beep_onsets(delivered),
                                 max(c.seconds for c in delivered)))
                white = now_white
        finally:
            audio.close()
            await stream.aclose()
        return seen
    for flash, onsets, newest in asyncio.run(asyncio.wait_for(run(), 60)):
        onset = min(onsets, key=lambda t: abs(t - flash))
        assert abs(onset - flash) <= TOLERANCE, f"the nearest beep handed out is {float(onset - flash):.3f} s off"
        assert newest - flash <= 2 * frame, f"audio ran {float(newest - flash):.3f} s ahead of the frames"


def undecodable_audio_clip(folder: Path) -> Path:
    """A Matroska file whose audio track names a codec no decoder knows (its codec id rewritten)."""
    pcm = folder / "pcm.mkv"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"color=c=gray:s={W}x{H}:r=25:d=2", "-f", "lavfi", "-i", "sine=f=440:r=8000:d=2",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", str(pcm)],
                   check=True, timeout=60)
    data = pcm.read_bytes()
    assert data.count(b"A_PCM/INT/LIT") == 1
    bad = folder / "bad-audio.mkv"
    bad.write_bytes(data.replace(b"A_PCM/INT/LIT", b"A_QQQ/INT/LIT"))
    return bad


def test_a_source_whose_audio_cannot_be_decoded_keeps_its_video_with_one_warning(ffmpeg, tmp_path, caplog):
    clip = undecodable_audio_clip(tmp_path)

    async def run() -> dict:
        stream = await file_stream(clip)
        try:
            deadline = time.monotonic() + 30
            while stream.pipeline.frames_out < 60:  # two passes of the looped file
                assert time.monotonic() < deadline, f"no video: {stream.describe()}"
                await asyncio.sleep(0.1)
            return stream.describe()
        finally:
            await stream.aclose()
    with caplog.at_level(logging.WARNING, logger="unseen.audio"):
        state = asyncio.run(asyncio.wait_for(run(), 60))
    assert state["state"] == "running" and state["frames_out"] >= 60
    assert state["audio"]["error"] and state["audio"]["chunks_out"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "unseen.audio"]
    assert len(warnings) == 1, warnings  # once, not once per pass of the loop
    assert "cannot be decoded" in warnings[0] and "\n" not in warnings[0] and ";" in warnings[0]


def test_audio_packets_that_do_not_decode_are_dropped_with_one_warning(ffmpeg, tmp_path, caplog):
    clip = make_clip(tmp_path / "clip.mkv", 1, 1, "aac")
    with av.open(str(clip)) as c, caplog.at_level(logging.WARNING, logger="unseen.audio"):
        audio = AudioInput(c.streams.audio[0], "stream 'cam'")
        good = [audio.decode(p) for p in c.demux(audio=0) if p.size][:5]
        bad = [audio.decode(av.Packet(b"\xff" * 64)) for _ in range(3)]
    assert all(s is not None and s.dtype == np.int16 for s in good) and bad == [None] * 3
    assert audio.errors == 3 and audio.format.codec == "aac" and audio.format.rate == 48000
    warnings = [r.getMessage() for r in caplog.records if r.name == "unseen.audio"]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "the video goes on" in warnings[0], warnings


def test_a_looped_files_audio_follows_its_frames_into_the_next_pass(ffmpeg, tmp_path):
    clip = make_clip(tmp_path / "clip.mkv", 2, 2, "pcmu")
    source = Source(clip, loop=True)
    audio: list[float] = []
    source.on_audio = lambda packet: audio.append(float(packet.pts * packet.time_base))
    frames = []
    for frame in source:
        frames.append(frame.seconds)
        if len(frames) == 2 * 2 * FPS + 1:  # two passes and the first frame of the third
            break
    source.close()
    second = [t for t in audio if t >= 2.0]
    assert second and all(b > a for a, b in zip(audio, audio[1:])), audio  # no step back at the loop
    assert frames[2 * FPS] == pytest.approx(2.0) and min(second) == pytest.approx(2.0, abs=0.05)


def test_audio_is_released_with_the_frame_it_belongs_to():
    """The delay line lets out the audio that starts before the end of the frame leaving, and no more."""
    fmt = AudioFormat("pcm_mulaw", 8000, "mono")
    tb = Fraction(1, 90000)
    line = AudioLine(maxlen=4)
    for i in range(6):  # 20 ms chunks at 0, 1800, ... ticks; the two oldest are dropped
        line.push(AudioChunk(i * 1800, tb, np.zeros((1, 160), np.int16), fmt))
    assert line.dropped == 2
    assert [c.pts for c in line.release(3600 + 1800)] == [3600]
    assert [c.pts for c in line.release(9000 + 1)] == [5400, 7200, 9000]
    assert len(line) == 0
