"""WHIP ingest and WHEP egress (server/whip.py): plain-SDP signalling beside the JSON offers.

1. Edge cases, table-driven, against the in-process app: every refusal is one line with its status, and
   the server keeps serving.
2. An aiortc client publishes a synthetic scene over WHIP, a second one watches over WHEP, a REST click
   removes the object; DELETE ends both sessions and frees their slots.
3. Headless Chromium does the same with a page script of its own (RTCPeerConnection + fetch, no project
   JavaScript): one page publishes its fake camera over WHIP, another watches over WHEP.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from fractions import Fraction

import numpy as np
import pytest
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from support.app_client import SYNTH, client, run, settings
from support.live import free_port, object_like, object_pixels, running, static_scene, unseen_cmd
from support.browser import ENV
from unseen.client.control import ControlError, rest
from unseen.engine.synthetic import interior_point

pytestmark = pytest.mark.timeout(180)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
W, H, FPS = 320, 192, 15
REMOVED = 0.02  # object pixels left after the click on any watched frame, as a fraction of its area (as test_browser)
HISTORY = 40  # frames through the stream before the click: held frames that saw the background behind it


async def local_offer(*, publish: bool) -> tuple[RTCPeerConnection, str]:
    """An aiortc offer: a publisher (sends video) or a viewer (receives video)."""
    pc = RTCPeerConnection()
    if publish:
        pc.addTrack(VideoStreamTrack())
    else:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def sdp_post(sdp: str | bytes, **headers: str) -> dict:
    """The request's keywords: an SDP body, its content type and the token."""
    body = sdp if isinstance(sdp, bytes) else sdp.encode()
    return {"data": body, "headers": {"Content-Type": "application/sdp", **AUTH, **headers}}


# ------------------------------------------------------------------------------ edge cases
OVERSIZE = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + "a=x-filler:0123456789abcdef\r\n" * 400
EDGES = [  # (method, path, what to send: "publisher"/"viewer" = a real aiortc offer, else the request's kwargs)
    ("post", "/whip/cam", {"data": b"v=0", "headers": {"Content-Type": "application/json", **AUTH}}, 415,
     "must be application/sdp"),
    ("post", "/whep/cam", {"data": b"v=0", "headers": {**AUTH}}, 415, "must be application/sdp"),
    ("post", "/whep/cam", {"data": b"v=0", "headers": {"Content-Type": "application/sdp"}}, 401, "token"),
    ("delete", "/whip/cam/x", {}, 401, "token"),
    ("post", "/whip/cam", "publisher+origin", 403, "not allowed"),
    ("post", "/whip/new", sdp_post(OVERSIZE), 413, "limit"),
    ("post", "/whep/nope", "viewer", 404, "unknown stream 'nope'"),
    ("delete", "/whip/cam/no-such-session", {"headers": AUTH}, 404, "no WHIP session"),
    ("delete", "/whep/cam/no-such-session", {"headers": AUTH}, 404, "no WHEP session"),
    ("patch", "/whip/cam/any", {"data": b"a=candidate:1", "headers": {"Content-Type":
                                                                     "application/trickle-ice-sdpfrag", **AUTH}},
     405, "not supported"),
    ("post", "/whip/new", sdp_post("hello"), 400, "not an SDP offer"),
    ("post", "/whip/new", sdp_post("v=0\r\nm=video nonsense\r\n"), 400, "cannot be used"),
    ("post", "/whip/new", sdp_post(b"v=0\r\nm=video \xff\r\n"), 400, "not UTF-8"),
    ("post", "/whip/bad%20name", "publisher", 400, "stream name"),
    ("post", "/whip/cam", "publisher", 409, "has its own source"),
    ("post", "/whip/new", "viewer", 400, "sends no video"),
    ("post", "/whep/cam", "viewer", 201, ""),  # and the one that is served, beside them
]


@pytest.mark.parametrize("method, path, send, status, fragment", EDGES,
                         ids=[f"{m} {p} {s}" for m, p, _, s, _ in EDGES])
def test_whip_whep_refusals_are_one_line_and_the_server_keeps_serving(method, path, send, status, fragment):
    async def body() -> None:
        s = settings(sources=[SYNTH], security={"token": TOKEN})
        s.limits.max_offer_bytes = 4096
        pcs = []
        async with client(s) as c:
            kwargs = send
            if isinstance(send, str):
                pc, sdp = await local_offer(publish=send.startswith("publisher"))
                pcs.append(pc)
                kwargs = sdp_post(sdp, **({"Origin": "http://evil.example"} if send.endswith("origin") else {}))
            r = await getattr(c, method)(path, **kwargs)
            text = await r.text()
            assert r.status == status, text
            if status == 201:
                assert r.content_type == "application/sdp" and text.startswith("v=0")
                assert r.headers["Location"].startswith("/whep/cam/")
            else:
                error = json.loads(text)["error"]
                assert fragment in error and "\n" not in error, error
            if status == 405:
                assert r.headers["Allow"] == "DELETE"
            assert (await c.get("/healthz/live")).status == 200
            streams = await (await c.get("/api/streams", headers=AUTH)).json()
            assert [x["name"] for x in streams] == ["cam"]  # nothing half-made is left behind
        for pc in pcs:
            await pc.close()
    run(body())


# ------------------------------------------------------------------------------ aiortc publisher and viewer
class SceneTrack(VideoStreamTrack):
    """The still-camera scene with its moving object, looped, paced at FPS (a camera's clock)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__()
        self.frames = frames
        self.sent = 0

    async def recv(self) -> VideoFrame:
        if self.sent:
            await asyncio.sleep(1 / FPS)  # the camera's frame interval
        frame = VideoFrame.from_ndarray(self.frames[self.sent % len(self.frames)], format="rgb24")
        frame.pts, frame.time_base = self.sent * 90000 // FPS, Fraction(1, 90000)
        self.sent += 1
        return frame


class Watcher:
    """A WHEP viewer's received frames (RGB), and an event per frame."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.frames: list[np.ndarray] = []
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None
        pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self.task = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.frames = self.frames[-20:] + [frame.to_ndarray(format="rgb24")]  # the newest only
                self.arrived.set()
        except MediaStreamError:
            pass

    async def next_frames(self, n: int, timeout: float = 60.0) -> list[np.ndarray]:
        """The next ``n`` frames that arrive."""
        got = []
        while len(got) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
            got.append(self.frames[-1])
        return got


def prompt(obj: np.ndarray) -> dict:
    """A click inside the object where a viewer sees it.  The prompt names no frame (WHEP carries no frame
    ids), so it lands on the server's newest frame, D frames and a network hop later, where the object has
    moved a few pixels: a click inside it still selects it, a box drawn tight around it no longer fits."""
    x, y = interior_point(obj)
    return {"x": x, "y": y}


async def connect(c, path: str, pc: RTCPeerConnection) -> str:
    """POST the connection's offer, apply the answer; the session's Location."""
    await pc.setLocalDescription(await pc.createOffer())
    r = await c.post(path, **sdp_post(pc.localDescription.sdp))
    assert r.status == 201, await r.text()
    assert r.content_type == "application/sdp"
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
    return r.headers["Location"]


async def until_state(c, name: str, predicate, what: str, timeout: float = 30.0) -> dict:
    """The stream's REST state (None once it is gone) when ``predicate`` holds (polled)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await c.get(f"/api/streams/{name}", headers=AUTH)
        state = await r.json() if r.status == 200 else None
        if predicate(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {json.dumps(state)[:400]}"
        await asyncio.sleep(0.1)


def test_aiortc_publishes_over_whip_watches_over_whep_and_the_click_removes_the_object():
    frames, background, masks = static_scene(W, H, FPS)
    area = int(np.mean([m.sum() for m in masks]))

    async def body() -> None:
        s = settings(security={"token": TOKEN}, ice={"loopback": True}, delay=4)  # as tests/test_browser.py
        publisher, viewer = RTCPeerConnection(), RTCPeerConnection()
        async with client(s) as c:
            try:
                track = SceneTrack(frames)
                publisher.addTrack(track)
                whip = await connect(c, "/whip/cam", publisher)
                assert whip.startswith("/whip/cam/")
                await until_state(c, "cam", lambda st: st and st["frames_out"] >= 5, "frames through the stream")
                viewer.addTransceiver("video", direction="recvonly")
                watcher = Watcher(viewer)
                whep = await connect(c, "/whep/cam", viewer)
                await until_state(c, "cam", lambda st: st["frames_out"] >= HISTORY, "a history to fill from")
                before = (await watcher.next_frames(3))[-1]
                assert before.shape == (H, W, 3)
                obj = object_pixels(before, background)
                assert obj.sum() > 0.5 * area, f"the object is not in the watched video ({obj.sum()} px of {area})"
                r = await c.post("/api/streams/cam/objects", json=prompt(obj), headers=AUTH)
                assert r.status == 200, await r.text()
                await watcher.next_frames(2 * FPS)  # the delay line, the round trip, the tracker settling
                residual = [int(object_like(f, background, frames, masks).sum()) for f in
                            await watcher.next_frames(10)]
                print(f"\nWHIP -> WHEP {W}x{H}: object px after the click {residual} (area {area})")
                assert max(residual) <= REMOVED * area, f"the object is still there: {residual} of {area}"

                await until_state(c, "cam", lambda st: st["viewers"] == 2, "the publisher and the viewer")
                assert (await c.delete(whep, headers=AUTH)).status == 200
                await until_state(c, "cam", lambda st: st["viewers"] == 1, "the viewer's slot freed by DELETE")
                assert (await c.delete(whep, headers=AUTH)).status == 404  # once
                assert (await c.delete(whip, headers=AUTH)).status == 200
                await until_state(c, "cam", lambda st: st is None, "the publisher's stream ended by DELETE")
                late, sdp = await local_offer(publish=False)
                assert (await c.post("/whep/cam", **sdp_post(sdp))).status == 404
                await late.close()
            finally:
                await asyncio.gather(publisher.close(), viewer.close())
    run(body(), timeout=150)


def test_a_configured_whip_source_is_fed_by_one_publisher_at_a_time_and_outlives_it():
    frames, _, _ = static_scene(W, H, FPS)

    async def body() -> None:
        s = settings(sources=[{"name": "door", "uri": "whip://"}], security={"token": TOKEN},
                     ice={"loopback": True})
        first, second, third = RTCPeerConnection(), RTCPeerConnection(), RTCPeerConnection()
        async with client(s) as c:
            try:
                state = await until_state(c, "door", lambda st: st is not None, "the configured stream")
                assert state["kind"] == "whip" and state["state"] == "waiting" and state["frames_out"] == 0
                first.addTrack(SceneTrack(frames))
                whip = await connect(c, "/whip/door", first)
                await until_state(c, "door", lambda st: st["frames_out"] >= 3, "the publisher's frames")
                second.addTrack(SceneTrack(frames))
                await second.setLocalDescription(await second.createOffer())
                r = await c.post("/whip/door", **sdp_post(second.localDescription.sdp))
                assert r.status == 409 and "already has a publisher" in (await r.json())["error"]
                assert (await c.delete(whip, headers=AUTH)).status == 200
                await until_state(c, "door", lambda st: st["viewers"] == 0, "the publisher's slot freed")
                third.addTrack(SceneTrack(frames))  # the stream stays: the next publisher feeds it
                gone = await connect(c, "/whip/door", third)
                out = (await until_state(c, "door", lambda st: st["viewers"] == 1, "the next publisher"))["frames_out"]
                await until_state(c, "door", lambda st: st["frames_out"] > out, "the next publisher's frames")
                await third.close()  # a publisher that leaves without DELETE: its session ends with it
                await until_state(c, "door", lambda st: st["viewers"] == 0, "the vanished publisher's slot freed")
                assert (await c.delete(gone, headers=AUTH)).status == 404
            finally:
                await asyncio.gather(first.close(), second.close(), third.close())
    run(body(), timeout=90)


def test_the_publishers_audio_reaches_a_whep_viewer_that_asks_for_it():
    frames, _, _ = static_scene(W, H, FPS)

    async def body() -> None:
        s = settings(security={"token": TOKEN}, ice={"loopback": True})
        publisher, viewer = RTCPeerConnection(), RTCPeerConnection()
        heard = asyncio.Event()

        async def listen(track) -> None:
            if track.kind == "audio":
                await track.recv()
                heard.set()

        viewer.on("track", lambda track: asyncio.ensure_future(listen(track)))
        async with client(s) as c:
            try:
                publisher.addTrack(SceneTrack(frames))
                publisher.addTrack(AudioStreamTrack())  # aiortc's silence, 20 ms packets
                await connect(c, "/whip/cam", publisher)
                viewer.addTransceiver("video", direction="recvonly")
                viewer.addTransceiver("audio", direction="recvonly")
                await connect(c, "/whep/cam", viewer)
                await asyncio.wait_for(heard.wait(), 30)
            finally:
                await asyncio.gather(publisher.close(), viewer.close())
    run(body(), timeout=60)


@pytest.mark.parametrize("schemes, status", [(["synthetic"], 403), (["synthetic", "whip"], 201)])
def test_a_whip_source_added_through_the_api_needs_its_scheme_allowed(schemes, status):
    async def body() -> None:
        s = settings(security={"token": TOKEN, "allow": {"schemes": schemes}})
        async with client(s) as c:
            r = await c.post("/api/streams", json={"name": "door", "uri": "whip://"}, headers=AUTH)
            assert r.status == status, await r.text()
            if status == 201:
                state = await r.json()
                assert state["kind"] == "whip" and state["state"] == "waiting"
            else:
                assert "not allowed" in (await r.json())["error"]
    run(body())


@pytest.mark.slow
def test_whep_viewers_are_limited_and_an_unconnected_one_frees_its_slot():
    async def body() -> None:
        s = settings(sources=[SYNTH], security={"token": TOKEN}, ice={"loopback": True})
        s.limits.max_viewers = 1
        async with client(s) as c:
            pcs = [(await local_offer(publish=False)) for _ in range(2)]
            try:
                r = await c.post("/whep/cam", **sdp_post(pcs[0][1]))  # its answer is never applied
                assert r.status == 201
                r2 = await c.post("/whep/cam", **sdp_post(pcs[1][1]))
                assert r2.status == 429 and "limit" in (await r2.json())["error"]
                # the first never connects: the connect timeout (15 s) frees its slot and ends its session
                await until_state(c, "cam", lambda st: st["viewers"] == 0, "the slot freed", timeout=30)
                assert (await c.delete(r.headers["Location"], headers=AUTH)).status == 404
            finally:
                await asyncio.gather(*(pc.close() for pc, _ in pcs))
    run(body(), timeout=60)


# ------------------------------------------------------------------------------ headless Chromium
# A page's own WHIP/WHEP client: RTCPeerConnection, every candidate gathered, the offer POSTed as SDP.
PAGE_CLIENT = """async ({path, token, publish}) => {
  const pc = new RTCPeerConnection();
  if (publish) {
    const camera = await navigator.mediaDevices.getUserMedia({video: true});
    pc.addTransceiver(camera.getVideoTracks()[0], {direction: 'sendonly'});
  } else {
    pc.addTransceiver('video', {direction: 'recvonly'});
    const video = document.createElement('video');
    video.muted = true; video.autoplay = true; video.playsInline = true;
    document.body.appendChild(video);
    window.shown = 0;
    const count = () => { window.shown += 1; video.requestVideoFrameCallback(count); };
    video.requestVideoFrameCallback(count);
    pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); video.play(); };
    window.grab = () => {
      const c = document.createElement('canvas');
      c.width = video.videoWidth; c.height = video.videoHeight;
      const g = c.getContext('2d'); g.drawImage(video, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let s = ''; for (let i = 0; i < d.length; i += 8192) s += String.fromCharCode(...d.subarray(i, i + 8192));
      return {width: c.width, height: c.height, rgba: btoa(s)};
    };
  }
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
  });
  const auth = {'Authorization': 'Bearer ' + token};
  const r = await fetch(path, {method: 'POST', headers: {...auth, 'Content-Type': 'application/sdp'},
                               body: pc.localDescription.sdp});
  if (r.status !== 201) throw new Error(`${r.status} ${await r.text()}`);
  const location = r.headers.get('Location');
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  window.pc = pc;
  window.end = async () => (await fetch(location, {method: 'DELETE', headers: auth})).status;
  return location;
}"""


def page_grab(page) -> np.ndarray:
    g = page.evaluate("window.grab()")
    return np.frombuffer(base64.b64decode(g["rgba"]), np.uint8).reshape(g["height"], g["width"], 4)[..., :3].copy()


def page_frames(page, n: int, timeout: float = 60.0) -> list[np.ndarray]:
    """The next ``n`` frames the watching page shows (each grabbed once the page has shown a new one)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        seen = page.evaluate("window.shown")
        page.wait_for_function(f"window.shown > {seen}", timeout=max(1.0, deadline - time.monotonic()) * 1000)
        got.append(page_grab(page))
    return got


def poll(base: str, path: str, predicate, what: str, timeout: float = 40.0):
    """A REST read of the server at ``base`` once ``predicate`` holds (None while it refuses)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = rest(base, "GET", path, token=TOKEN)
        except ControlError:
            value = None
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {json.dumps(value)[:400]}"
        time.sleep(0.25)


@pytest.mark.browser
@pytest.mark.slow
def test_chromium_publishes_over_whip_and_watches_over_whep_with_the_object_removed(playwright_browser, tmp_path):
    browser, (frames, background, masks) = playwright_browser
    area = int(np.mean([m.sum() for m in masks]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(ENV, UNSEEN_SECURITY__TOKEN=TOKEN)
    with running(unseen_cmd("serve", "--port", str(port)), tmp_path / "serve.log", env=env, port=port, timeout=60):
        publisher, watcher = browser.new_page(), browser.new_page()
        try:
            for page in (publisher, watcher):
                page.goto(f"{base}/healthz/live")  # this server's origin, and none of its JavaScript
            whip = publisher.evaluate(PAGE_CLIENT, {"path": "/whip/cam", "token": TOKEN, "publish": True})
            assert whip.startswith("/whip/cam/")
            poll(base, "/api/streams/cam", lambda st: st and st["frames_out"] >= 5, "the page's camera in the stream")
            whep = watcher.evaluate(PAGE_CLIENT, {"path": "/whep/cam", "token": TOKEN, "publish": False})
            assert whep.startswith("/whep/cam/")
            poll(base, "/api/streams/cam", lambda st: st["frames_out"] >= HISTORY, "a history to fill from")
            seen = page_frames(watcher, 3)[-1]
            assert seen.shape == (H, W, 3), seen.shape
            obj = object_pixels(seen, background)
            assert obj.sum() > 0.5 * area, f"the object is not in the watched video ({obj.sum()} px of {area})"
            rest(base, "POST", "/api/streams/cam/objects", prompt(obj), token=TOKEN, timeout=60)
            page_frames(watcher, 3 * FPS)  # the delay line, the round trip, the tracker settling
            residual = [int(object_like(f, background, frames, masks).sum()) for f in page_frames(watcher, 10)]
            print(f"\nChromium WHIP -> WHEP {W}x{H}: object px before "
                  f"{int(object_like(seen, background, frames, masks).sum())}, after {residual} (area {area})")
            assert max(residual) <= REMOVED * area, f"the object is still there: {residual} of {area}"

            assert watcher.evaluate("window.end()") == 200
            poll(base, "/api/streams/cam", lambda st: st["viewers"] == 1, "the page viewer's slot freed by DELETE")
            assert publisher.evaluate("window.end()") == 200
            poll(base, "/api/streams", lambda streams: streams == [], "the publisher's stream ended by DELETE")
        finally:
            publisher.close()
            watcher.close()
