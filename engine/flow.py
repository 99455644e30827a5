"""Dense optical flow at a working resolution, computed once per pair of frames and shared.

The classical propagator and the classical inpainter need DIS flow between the same consecutive
frames (the propagator when a frame arrives, the inpainter a few frames later, when that frame's
neighbours fill a hole): a :class:`FlowCache` computes each flow (and each frame's grey image at
the working size) once.  The inpainter also walks forward in time: :meth:`FlowCache.forward` inverts
the propagator's backward flow instead of computing a second DIS flow for the pair.  Entries are
keyed by the frames' images themselves, held by weak reference (the cache keeps no frame alive, and
an entry is never returned for another image, even one that reuses a freed image's address).  The
cache is bounded: least recently used entries are evicted first.

Imports only numpy, OpenCV and engine/fill.py: any module of the engine may use it.
"""
from __future__ import annotations

import collections
import threading
import weakref

import cv2
import numpy as np

from .fill import fill_invalid

FLOW_SIZE = 480  # long side the flow is computed at (px)
CAPACITY = 96  # DIS flows kept (about 1 MB each at 480x270), least recently used evicted first: the backward
# one of each frame over the inpainter's window and the frames decoded ahead, and its reference flows
FORWARD_CAPACITY = CAPACITY // 2  # inverted (forward) flows kept: one a frame, over the same frames
INVERSION_STEPS = 3  # fixed-point steps inverting a flow (on DAVIS pairs after 3: median residual under 0.01
# px; 1-13% of the pixels do not close within INVERSION_CLOSE, 7-10% after 5)
INVERSION_CLOSE = 0.5  # px (working size): where the inverse misses by more, it is completed from around it


def working_scale(shape: tuple[int, ...], size: int = FLOW_SIZE) -> float:
    """Scale from a frame of ``shape`` (H, W, ...) to the working size (never above 1)."""
    return min(1.0, size / max(shape[:2]))


def to_working(image: np.ndarray, scale: float, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """``image`` resized by ``scale`` (rounded to whole pixels); the image itself at scale 1."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=interpolation)


def invert(back: np.ndarray, steps: int = INVERSION_STEPS, close: float = INVERSION_CLOSE) -> np.ndarray:
    """The forward flow ``f`` of a backward flow ``back`` (each pixel y of the later frame was at
    y + back(y)): for each pixel x of the earlier frame, f(x) = -back(x + f(x)), solved by fixed-point
    steps from f = -back.  Where the result does not close (x + f(x) does not map back to x within
    ``close`` px: x is hidden in the later frame, or the flow is ambiguous there) it is completed by
    push-pull from the pixels around it, as flow is completed inside holes.

    The fill walks along it as well as along the forward DIS flow (remove suite, true masks 19.24 ->
    19.26 dB, one click 13.34 -> 13.40 dB), more cheaply: about 4 ms at 480x270 on one core, where DIS
    (preset medium) takes 8-14 ms on two."""
    h, w = back.shape[:2]
    grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))

    def at_target(f: np.ndarray) -> np.ndarray:  # (one two-channel map: half the cost of two maps)
        return cv2.remap(back, grid + f, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    f = -back
    for _ in range(steps):
        f = -at_target(f)
    miss = f + at_target(f)
    return fill_invalid(f, squared_speed(miss) <= close * close)


def squared_speed(flow: np.ndarray, against: np.ndarray | None = None) -> np.ndarray:
    """Per pixel, the squared length of ``flow`` (HxWx2) minus the motion ``against`` (a 2-vector): the
    same values and type as ``((flow - against) ** 2).sum(axis=2)``, at a tenth of its cost (no whole-field
    temporaries and reduction over the last axis)."""
    dx, dy = flow[..., 0], flow[..., 1]
    if against is not None:
        dx, dy = dx - against[0], dy - against[1]
    return dx * dx + dy * dy


class _Keyed:
    """A bounded LRU map whose keys are tuples of live arrays (compared by identity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict = collections.OrderedDict()  # ids -> (weakrefs, value)

    def get(self, arrays: tuple[np.ndarray, ...]):
        key = tuple(id(a) for a in arrays)
        item = self._items.get(key)
        if item is None:
            return None
        refs, value = item
        if any(r() is not a for r, a in zip(refs, arrays)):  # an old entry at a reused address
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, arrays: tuple[np.ndarray, ...], value) -> None:
        key = tuple(id(a) for a in arrays)
        self._items[key] = (tuple(weakref.ref(a) for a in arrays), value)
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class FlowCache:
    """DIS optical flow (preset medium) and grey images at the working size, each computed once.

    ``flow(a, b)`` is, for each pixel of ``a`` (at the working size), where it is in ``b`` (working
    px).  Thread-safe: each thread has its own DIS instance; two threads asking for the same flow at
    once may both compute it (the same result)."""

    def __init__(self, capacity: int = CAPACITY, size: int = FLOW_SIZE, forward_capacity: int = FORWARD_CAPACITY
                 ) -> None:
        self.size = size
        self._flows = _Keyed(capacity)
        self._forward = _Keyed(forward_capacity)  # inverted flows (forward(a, b)), apart from the DIS ones
        self._grays = _Keyed(capacity)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.computed = 0  # flows computed (the rest were found): for tests and diagnostics
        self.inverted = 0  # forward flows made by inversion (likewise)

    def scale(self, image: np.ndarray) -> float:
        return working_scale(image.shape, self.size)

    def gray(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            found = self._grays.get((image,))
        if found is None:
            found = to_working(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), self.scale(image))
            with self._lock:
                self._grays.put((image,), found)
        return found

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        found = self.cached(a, b)
        if found is None:
            found = self.dis().calc(self.gray(a), self.gray(b), None)
            with self._lock:
                self._flows.put((a, b), found)
                self.computed += 1
        return found

    def cached(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """``flow(a, b)`` when it was computed already, else None (nothing is computed)."""
        with self._lock:
            return self._flows.get((a, b))

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Like ``flow(a, b)``, for ``a`` the frame before ``b``: the inverse of ``flow(b, a)`` (the
        propagator's, usually found here), computed once."""
        with self._lock:
            found = self._forward.get((a, b))
        if found is None:
            found = invert(self.flow(b, a))
            with self._lock:
                self._forward.put((a, b), found)
                self.inverted += 1
        return found

    def dis(self) -> cv2.DISOpticalFlow:
        """This thread's DIS instance (one is not safe to share between threads)."""
        dis = getattr(self._local, "dis", None)
        if dis is None:
            dis = self._local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis

    def __len__(self) -> int:
        return len(self._flows)

    def clear(self) -> None:
        with self._lock:
            self._flows.clear()
            self._forward.clear()
            self._grays.clear()


_shared = FlowCache()


def shared() -> FlowCache:
    """The process's cache, for backends not handed one (``BackendOptions.flows``)."""
    return _shared
