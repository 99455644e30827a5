"""Helpers for the live tests: free ports, a static synthetic scene, subprocesses that always stop."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from unseen.client.control import rest
from unseen.engine.holes import _nearest  # OpenCV's exact search: no BLAS threads spinning beside the server
from unseen.engine.synthetic import make_clip

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def gst_missing() -> str | None:
    """Why GStreamer's RTSP server cannot run here (Debian's python3 with gi), or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found; install Debian's python3-gi (tests/support/ci_services.sh)"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                                                 "from gi.repository import GstRtspServer"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        return (f"{SYSTEM_PYTHON} lacks gi/GstRtspServer; run tests/support/ci_services.sh "
                f"(gir1.2-gst-rtsp-server-1.0 python3-gi)")
    return None


def wait_state(base: str, predicate, timeout: float, what: str, stream: str = "cam") -> dict:
    """The REST state of a stream of the ``unseen serve`` at ``base`` once ``predicate`` holds (polled)."""
    deadline = time.monotonic() + timeout
    s: dict = {}
    while time.monotonic() < deadline:
        try:
            s = rest(base, "GET", f"/api/streams/{stream}")
            if predicate(s):
                return s
        except Exception:  # noqa: BLE001 - the server may still be starting
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last state: {json.dumps(s)[:600]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def static_scene(width: int, height: int, fps: int, frames: int = 60):
    """A still camera and a slowly moving object, ping-pong looped so the loop never jumps.

    Returns (frames, background, masks): one background for every frame (the camera is still)."""
    clip = make_clip(frames * 4, width, height, pan=(0.0, 0.0), rate=Fraction(fps), seed=5)
    idx = list(range(frames)) + list(range(frames - 2, 0, -1))
    return [clip.frames[i] for i in idx], clip.backgrounds[0], [clip.masks[i] for i in idx]


def write_pngs(folder: Path, frames: list[np.ndarray]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"f{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return str(folder / "f%04d.png")


def object_pixels(image: np.ndarray, background: np.ndarray, threshold: int = 60) -> np.ndarray:
    """Pixels that differ strongly from the still background: the object (if it is there)."""
    return np.abs(image.astype(np.int16) - background.astype(np.int16)).max(axis=2) > threshold


def object_like(image: np.ndarray, background: np.ndarray, frames: list[np.ndarray], masks: list[np.ndarray],
                tolerance: float = 20.0) -> np.ndarray:
    """Pixels that differ from the still background *and* have one of the object's colours (sampled from
    its masks; the synthetic object's colours are all far from every background colour): the object, if it
    is there.  A fill made up where the background was never seen also differs from the background, so
    :func:`object_pixels` counts it too; this does not."""
    rng = np.random.default_rng(0)
    palette = np.concatenate([f[m] for f, m in zip(frames[::10], masks[::10])])
    palette = palette[rng.choice(len(palette), min(1500, len(palette)), replace=False)]
    candidates = object_pixels(image, background)
    found = np.zeros(candidates.shape, bool)
    ys, xs = np.nonzero(candidates)
    found[ys, xs] = _nearest(image[ys, xs], palette) < tolerance
    return found


class Proc:
    """A subprocess in its own process group, stopped (TERM, then KILL) by :meth:`stop`."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, **(env or {})}, start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


@contextlib.contextmanager
def running(args: list[str], log: Path, env: dict | None = None, port: int | None = None,
            timeout: float = 30.0) -> Iterator[Proc]:
    proc = Proc(args, log, env)
    try:
        if port is not None:
            try:
                wait_port(port, timeout)
            except TimeoutError as exc:
                raise RuntimeError(f"{exc}; its log:\n{proc.tail()}") from None
        yield proc
    finally:
        proc.stop()


def unseen_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "unseen.server.cli", *args]
