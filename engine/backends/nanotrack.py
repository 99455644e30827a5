"""NanoTrack V2, a trained Siamese box tracker, run by OpenCV (``cv2.TrackerNano``) on the two ONNX files that
weights/ hands over (checked against their sha256): one tracker follows one object's box."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from unseen.weights.store import InstalledFiles

from ..stages import Box, Image

BACKBONE = "nanotrack_backbone_sim.onnx"
HEAD = "nanotrack_head_sim.onnx"


@dataclass(frozen=True)
class TrackedBox:
    """Where the tracker puts the object on a frame, and how sure it is (its classification score, 0-1)."""

    box: Box
    score: float


_QUIET = threading.Lock()  # OpenCV's log level is global: one creation at a time lowers and restores it


class NanoTracker:
    """One object's box tracker: :meth:`start` on a box, then :meth:`update` once per frame in order."""

    def __init__(self, files: InstalledFiles) -> None:
        self._files = files
        self._tracker: cv2.Tracker | None = None

    def start(self, image: Image, box: Box) -> None:
        """Follow the object in ``box`` (x0, y0, x1, y1) of ``image`` from now on (its template is taken here)."""
        if self._tracker is None:  # the networks are read once; a new start only takes a new template
            params = cv2.TrackerNano_Params()
            params.backbone, params.neckhead = str(self._files[BACKBONE]), str(self._files[HEAD])
            with _QUIET:  # OpenCV warns, on every creation, that its new DNN engine ignores the CPU target
                level = cv2.utils.logging.getLogLevel()
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
                try:
                    self._tracker = cv2.TrackerNano_create(params)
                finally:
                    cv2.utils.logging.setLogLevel(level)
        x0, y0, x1, y1 = box
        rect = (int(x0), int(y0), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0))))
        self._tracker.init(_bgr(image), rect)

    def update(self, image: Image) -> TrackedBox:
        if self._tracker is None:
            raise RuntimeError("NanoTracker.update before start")
        found, (x, y, w, h) = self._tracker.update(_bgr(image))
        score = float(self._tracker.getTrackingScore()) if found else 0.0
        return TrackedBox((float(x), float(y), float(x + w), float(y + h)), score)


def _bgr(image: Image) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # the network was trained on OpenCV's BGR frames
