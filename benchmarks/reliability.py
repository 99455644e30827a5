"""Suite *reliability*: churn and soak against a real ``unseen serve`` subprocess.

Protocol.  Each part starts its own ``unseen serve`` (a subprocess of this Python: classical
backends, loopback, ``ice.loopback``), measured from outside with psutil (RSS, open fds, threads),
and stops it with SIGTERM (exit code and drain time recorded).  Its log is scanned for unhandled
errors: ERROR lines and tracebacks.
Churn: one configured stream (``base``, synthetic 192x112 at 15 fps) runs throughout; then 1,000
WebSocket cycles (connect /ws, one ``streams`` request, a GET of /metrics, close) and 200 stream
cycles (POST /api/streams with a synthetic 432x240 source at 30 fps, 3 frames out, a click on every
20th and the last, DELETE).  Server RSS, fds and threads at the start, after the churn, and after ``base`` is
removed too (no stream left), each after a 3 s settle.
Soak: N minutes (default 30) of one live stream (synthetic 432x240 at 15 fps, or a video file looped
with ``--soak-source``), one object removed by a click once 30 frames are out, and two aiortc
viewers that join, receive frames for 20 s, leave and join again, throughout.  Sampled every 10 s:
RSS, the stream's state (frames in/out, dropped, degraded, delay).  RSS growth is end minus after
warm-up (warm-up: min(2 min, a quarter of the soak)); target under 50 MB.  The delay in frames and
seconds should be constant; unhandled errors in the log should be 0.
``--quick``: 20 WebSocket and 4 stream cycles, a 20 s soak with 4 s viewer sessions.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp

from . import report
from .common import Context

log = logging.getLogger("unseen.benchmarks")

CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}
BASE = {"name": "base", "uri": "synthetic://base", "loop": True, "width": 192, "height": 112, "fps": 15}
SOAK_SIZE, SOAK_FPS = (432, 240), 15
CHURN = {"ws": (20, 1000), "streams": (4, 200)}  # (quick, full) cycles
CLICK_EVERY = 20  # stream cycles: every 20th gets a click (segmentation, tracking, a hole to fill)
SETTLE_S = 3.0
RSS_GROWTH_TARGET_MB = 50.0
ERROR_LINE = re.compile(r"^(E |ERROR|CRITICAL|C )")


@dataclass
class Options:
    """What this suite takes beyond the common context."""

    soak_minutes: float = 30.0  # --quick: 20 s
    soak_source: str = "synthetic"  # or a video file, looped
    ws_cycles: int | None = None  # default CHURN
    stream_cycles: int | None = None


@dataclass
class ProcStats:
    rss_mb: float
    fds: int
    threads: int


@dataclass
class LogErrors:
    errors: int  # ERROR/CRITICAL lines
    tracebacks: int
    examples: list[str] = field(default_factory=list)

    @property
    def unhandled(self) -> int:
        return self.errors + self.tracebacks


def scan_log(text: str) -> LogErrors:
    lines = text.splitlines()
    errors = [ln for ln in lines if ERROR_LINE.match(ln)]
    tracebacks = sum(ln.startswith("Traceback (most recent call last)") for ln in lines)
    return LogErrors(len(errors), tracebacks, [ln[:300] for ln in errors[:5]])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``unseen serve`` as a subprocess with a JSON config; measured with psutil, stopped with SIGTERM."""

    def __init__(self, folder: Path, config: dict) -> None:
        self.folder = folder
        self.port = free_port()
        self.config_path = folder / "serve.json"
        self.config_path.write_text(json.dumps({"demo": False, "backends": CLASSICAL, "ice": {"loopback": True},
                                                **config}))
        self.log_path = folder / "serve.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    async def start(self, timeout: float = 90.0) -> None:
        import psutil

        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "unseen.server.cli", "serve", "--config",
                                      str(self.config_path), "--port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"unseen serve exited with {self.proc.returncode}; its log:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/healthz/ready") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"unseen serve not ready after {timeout:g} s; its log:\n{self.tail()}")
                await asyncio.sleep(0.2)

    def stats(self) -> ProcStats:
        return ProcStats(round(self.ps.memory_info().rss / 2 ** 20, 1), self.ps.num_fds(), self.ps.num_threads())

    def stop(self, timeout: float = 15.0) -> dict:
        """SIGTERM; the exit code and the seconds to exit (a drain); KILL after ``timeout``."""
        assert self.proc is not None
        t0 = time.monotonic()
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(5)
        if self._log is not None:
            self._log.close()
        return {"exit_code": rc, "exit_s": round(time.monotonic() - t0, 2)}

    def errors(self) -> LogErrors:
        return scan_log(self.log_path.read_text(errors="replace"))

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


class Api:
    """The HTTP and WebSocket calls of the suite (JSON bodies always sent with ``json=``)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.s = session
        self.url = url

    async def _json(self, method: str, path: str, expect: int, **kw) -> dict | list:
        async with self.s.request(method, self.url + path, **kw) as r:
            body = await r.json()
            if r.status != expect:
                raise RuntimeError(f"{method} {path}: HTTP {r.status}: {body}")
            return body

    async def state(self, name: str) -> dict:
        return await self._json("GET", f"/api/streams/{name}", 200)

    async def wait_frames(self, name: str, n: int, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = await self.state(name)
            if state["frames_out"] >= n:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {name} has {state['frames_out']} frames out after {timeout:g} s")
            await asyncio.sleep(0.05)

    async def add(self, source: dict) -> dict:
        return await self._json("POST", "/api/streams", 201, json=source)

    async def delete(self, name: str) -> dict:
        return await self._json("DELETE", f"/api/streams/{name}", 200)

    async def click(self, name: str, x: float, y: float, frame: int | None = None) -> dict:
        body = {"x": x, "y": y} if frame is None else {"x": x, "y": y, "frame": frame}
        return await self._json("POST", f"/api/streams/{name}/objects", 200, json=body)

    async def ws_cycle(self, i: int) -> None:
        async with self.s.ws_connect(self.url + "/ws") as ws:
            await ws.send_json({"id": i, "op": "streams"})
            reply = await asyncio.wait_for(ws.receive_json(), 30)
            if reply.get("id") != i or not reply.get("ok"):
                raise RuntimeError(f"WebSocket request {i}: {reply}")
        async with self.s.get(self.url + "/metrics") as r:
            await r.read()


# ------------------------------------------------------------------------------------ churn
async def churn(folder: Path, ws_cycles: int, stream_cycles: int, say) -> dict:
    server = ServeProcess(folder, {"sources": [BASE]})
    await server.start()
    out: dict = {"ws_cycles": ws_cycles, "stream_cycles": stream_cycles, "clicks": 0, "failures": []}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            api = Api(session, server.url)
            await api.wait_frames("base", 5)
            await asyncio.sleep(SETTLE_S)
            out["start"] = asdict(server.stats())
            t0 = time.perf_counter()
            for i in range(ws_cycles):
                await _attempt(out, "ws", api.ws_cycle(i))
            out["ws_s"] = round(time.perf_counter() - t0, 1)
            say(f"[reliability] churn: {ws_cycles} WebSocket cycles in {out['ws_s']} s; RSS "
                f"{server.stats().rss_mb:.0f} MiB")
            t0 = time.perf_counter()
            for i in range(stream_cycles):
                click = (i + 1) % CLICK_EVERY == 0 or i == stream_cycles - 1  # the last one too (--quick)
                out["clicks"] += click
                await _attempt(out, "stream", _stream_cycle(api, f"churn{i}", click))
                if (i + 1) % 50 == 0:
                    say(f"[reliability] churn: {i + 1} stream cycles; RSS {server.stats().rss_mb:.0f} MiB")
            out["streams_s"] = round(time.perf_counter() - t0, 1)
            await asyncio.sleep(SETTLE_S)
            out["after_churn"] = asdict(server.stats())
            await api.delete("base")
            await asyncio.sleep(SETTLE_S)
            out["after_all_removed"] = asdict(server.stats())
            out["streams_left"] = len(await api._json("GET", "/api/streams", 200))
    finally:
        out["shutdown"] = server.stop()
        out["log_errors"] = asdict(server.errors())
        out["memory_release_lines"] = server.log_path.read_text(errors="replace").count("memory: RSS")
    s, a, e = out["start"], out["after_churn"], out["after_all_removed"]
    out["rss_growth_mb"] = round(e["rss_mb"] - s["rss_mb"], 1)
    out["fds_delta"] = e["fds"] - s["fds"]
    out["threads_delta"] = e["threads"] - s["threads"]
    say(f"[reliability] churn: RSS {s['rss_mb']:.0f} -> {a['rss_mb']:.0f} -> {e['rss_mb']:.0f} MiB; fds "
        f"{s['fds']} -> {e['fds']}; threads {s['threads']} -> {e['threads']}")
    return out


async def _attempt(out: dict, kind: str, coro) -> None:
    """One cycle; a failure is counted (with its first line) and the churn goes on."""
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - reported in the result
        if len(out["failures"]) < 20:
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            out["failures"].append(f"{kind}: {type(exc).__name__}: {first}")
        out[f"{kind}_failed"] = out.get(f"{kind}_failed", 0) + 1


async def _stream_cycle(api: Api, name: str, click: bool) -> None:
    await api.add({"name": name, "uri": f"synthetic://{name}", "loop": True, "width": SOAK_SIZE[0],
                   "height": SOAK_SIZE[1], "fps": 30})
    try:
        state = await api.wait_frames(name, 3)
        if click:
            await api.click(name, *_object_at(state, SOAK_SIZE))
    finally:
        await api.delete(name)


# ------------------------------------------------------------------------------------- soak
def _object_at(state: dict, size: tuple[int, int], rate: float = 15.0) -> tuple[float, float, int]:
    """(x, y, frame): the synthetic object's centre on the newest held frame of a synthetic stream.

    The source plays the 60-frame scene ping-pong; without drops, pipeline frame i is scene frame
    ``order[i % len(order)]`` (the same scene: ``make_clip(60, w, h, seed=3)``)."""
    from unseen.engine.synthetic import make_clip

    clip = make_clip(60, size[0], size[1], seed=3, rate=Fraction(rate).limit_denominator(1001))
    n = len(clip.frames)
    order = list(range(n)) + list(range(n - 2, 0, -1))
    frame = max(0, state["frames_in"] - 1)
    ys, xs = clip.masks[order[frame % len(order)]].nonzero()
    return float(round(xs.mean())), float(round(ys.mean())), frame


class Viewers:
    """aiortc viewers of one stream that join, receive frames for ``view_s``, leave, and join again."""

    def __init__(self, url: str, stream: str, view_s: float) -> None:
        self.url, self.stream, self.view_s = url, stream, view_s
        self.sessions = 0
        self.frames = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def run(self, count: int) -> None:
        await asyncio.gather(*(self._loop() for _ in range(count)))

    def stop(self) -> None:
        self._stop.set()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames += await self._session()
                self.sessions += 1
            except Exception as exc:  # noqa: BLE001 - counted; the viewer tries again
                if len(self.failures) < 10:
                    self.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def _session(self) -> int:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.createDataChannel("meta")
            track_ready: asyncio.Future = asyncio.get_running_loop().create_future()
            pc.on("track", lambda t: track_ready.done() or track_ready.set_result(t))
            await pc.setLocalDescription(await pc.createOffer())
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{self.url}/api/streams/{self.stream}/offer",
                                  json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                    answer = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"offer: HTTP {r.status}: {answer}")
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            track = await asyncio.wait_for(track_ready, 10)
            frames = 0
            end = time.monotonic() + self.view_s
            while time.monotonic() < end and not self._stop.is_set():
                await asyncio.wait_for(track.recv(), 10)
                frames += 1
            if frames == 0:
                raise RuntimeError("the viewer received no frame")
            return frames
        finally:
            await pc.close()


async def soak(folder: Path, seconds: float, source: str, view_s: float, sample_s: float, say) -> dict:
    synthetic = source == "synthetic"
    stream = {"name": "cam", "uri": "synthetic://cam", "loop": True, "width": SOAK_SIZE[0],
              "height": SOAK_SIZE[1], "fps": SOAK_FPS} if synthetic else {"name": "cam", "uri": source, "loop": True}
    server = ServeProcess(folder, {"sources": [stream]})
    await server.start()
    warm_s = min(120.0, seconds / 4)
    out: dict = {"seconds": seconds, "source": stream["uri"], "warmup_s": warm_s, "viewer_session_s": view_s,
                 "samples": []}
    viewers = Viewers(server.url, "cam", view_s)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, server.url)
            state = await api.wait_frames("cam", 30)
            out["rss_start_mb"] = server.stats().rss_mb
            x, y, frame = _object_at(state, SOAK_SIZE, SOAK_FPS) if synthetic else (  # speed.py's woman
                round(0.27 * state["width"]), round(0.55 * state["height"]), None)
            out["click"] = {"x": x, "y": y, "frame": frame}
            try:  # a click not applied is reported; the soak goes on without the object
                out["click"]["object"] = (await api.click("cam", x, y, frame))["object"]
            except RuntimeError as exc:
                out["click"]["error"] = str(exc)[:300]
                say(f"[reliability] soak: the click failed ({exc}); soaking without a removed object")
            viewing = asyncio.ensure_future(viewers.run(2))
            t0 = time.monotonic()
            warm_done = False
            while (elapsed := time.monotonic() - t0) < seconds:
                await asyncio.sleep(min(sample_s, max(0.0, seconds - elapsed)))
                sample = _sample(await api.state("cam"), server.stats(), time.monotonic() - t0)
                out["samples"].append(sample)
                if not warm_done and sample["t"] >= warm_s:
                    warm_done = True
                    out["rss_warm_mb"] = sample["rss_mb"]
                if len(out["samples"]) % max(1, int(60 / sample_s)) == 0:
                    say(f"[reliability] soak: {sample['t']:.0f} s, RSS {sample['rss_mb']:.0f} MiB, frames out "
                        f"{sample['frames_out']}, degraded {sample['degraded']}, dropped {sample['dropped']}, "
                        f"viewer sessions {viewers.sessions}")
            viewers.stop()
            await asyncio.wait_for(viewing, 30)
            final = await api.state("cam")
    finally:
        viewers.stop()
        out["shutdown"] = server.stop()
        out["log_errors"] = asdict(server.errors())
    samples = out["samples"]
    out["rss_end_mb"] = samples[-1]["rss_mb"]
    out.setdefault("rss_warm_mb", samples[0]["rss_mb"])
    out["rss_growth_mb"] = round(out["rss_end_mb"] - out["rss_warm_mb"], 1)
    out["rss_max_mb"] = max(s["rss_mb"] for s in samples)
    delays = {(s["delay_frames"], s["delay_seconds"]) for s in samples}
    out["delay_frames"], out["delay_seconds"] = final["delay_frames"], final["delay_seconds"]
    out["delay_constant"] = len(delays) == 1
    for key in ("frames_in", "frames_out", "degraded", "dropped"):
        out[key] = final[key]
    out["objects"] = len(final["objects"])
    out["viewers"] = {"sessions": viewers.sessions, "frames": viewers.frames, "failures": viewers.failures}
    return out


def _sample(state: dict, stats: ProcStats, t: float) -> dict:
    return {"t": round(t, 1), "rss_mb": stats.rss_mb, "fds": stats.fds, "threads": stats.threads,
            **{k: state[k] for k in ("frames_in", "frames_out", "degraded", "dropped", "delay_frames",
                                     "delay_seconds", "fps", "viewers")}}


# -------------------------------------------------------------------------------------- run
def run(ctx: Context, options: Options | None = None) -> dict:
    options = options or Options()
    started = time.perf_counter()
    result = ctx.header("reliability")
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    q = 0 if ctx.quick else 1
    ws = options.ws_cycles if options.ws_cycles is not None else CHURN["ws"][q]
    streams = options.stream_cycles if options.stream_cycles is not None else CHURN["streams"][q]
    seconds = 20.0 if ctx.quick else options.soak_minutes * 60
    with tempfile.TemporaryDirectory(prefix="unseen-reliability-") as tmp:
        folder = Path(tmp)
        (folder / "churn").mkdir()
        (folder / "soak").mkdir()
        ctx.say(f"[reliability] churn: {ws} WebSocket and {streams} stream cycles against unseen serve ...")
        result["churn"] = asyncio.run(churn(folder / "churn", ws, streams, ctx.say))
        report.write_json(ctx.results / "reliability.json", result)
        if seconds > 0:
            ctx.say(f"[reliability] soak: {seconds:g} s of {options.soak_source}, one object removed, viewers "
                    f"joining and leaving ...")
            result["soak"] = asyncio.run(soak(folder / "soak", seconds, options.soak_source,
                                              4.0 if ctx.quick else 20.0, 2.0 if ctx.quick else 10.0, ctx.say))
    ctx.finish("reliability", result, started)
    print_table(result)
    return result


def rows(result: dict) -> list[list]:
    c = result["churn"]
    out = [["churn: server RSS start / after churn / no stream left",
            " / ".join(f"{c[k]['rss_mb']:.0f}" for k in ("start", "after_churn", "after_all_removed")) + " MiB",
            f"{c['ws_cycles']} WebSocket + {c['stream_cycles']} stream cycles ({c['clicks']} clicks); "
            f"failures {len(c['failures'])}"],
           ["churn: fds / threads, start -> no stream left",
            f"{c['start']['fds']} -> {c['after_all_removed']['fds']} / "
            f"{c['start']['threads']} -> {c['after_all_removed']['threads']}",
            f"unhandled errors in the log {c['log_errors']['errors'] + c['log_errors']['tracebacks']}; SIGTERM: exit "
            f"{c['shutdown']['exit_code']} in {c['shutdown']['exit_s']} s"]]
    s = result.get("soak")
    if s:
        out += [["soak: RSS start / after warm-up / end (growth)",
                 f"{s['rss_start_mb']:.0f} / {s['rss_warm_mb']:.0f} / {s['rss_end_mb']:.0f} MiB "
                 f"({s['rss_growth_mb']:+.1f}; target < {RSS_GROWTH_TARGET_MB:g})",
                 f"{s['seconds'] / 60:.1f} min of {s['source']}; max {s['rss_max_mb']:.0f} MiB; objects removed "
                 f"{s['objects']}" + (f" (click failed: {s['click']['error']})" if "error" in s["click"] else "")],
                ["soak: delay", f"{s['delay_frames']} frames / {report.fmt(s['delay_seconds'], 3)} s",
                 "constant" if s["delay_constant"] else "CHANGED during the soak"],
                ["soak: frames in / out, degraded, dropped",
                 f"{s['frames_in']} / {s['frames_out']}, {s['degraded']}, {s['dropped']}",
                 f"viewer sessions {s['viewers']['sessions']} ({s['viewers']['frames']} frames, "
                 f"{len(s['viewers']['failures'])} failed)"],
                ["soak: unhandled errors in the log", str(s["log_errors"]["errors"] + s["log_errors"]["tracebacks"]),
                 f"target 0; SIGTERM: exit {s['shutdown']['exit_code']} in {s['shutdown']['exit_s']} s"]]
    return out


def print_table(result: dict) -> None:
    print(f"\nreliability ({report.machine_line(result['machine'])}; load average {result['loadavg_start']}"
          f"{', quick' if result['quick'] else ''})")
    print(report.table(["measure", "value", "details"], rows(result)))
