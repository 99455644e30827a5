"""Clip discovery and loading for the benchmarks.

A data folder holds one sub-folder per clip.  A clip is either a ``frames/`` folder of
numbered images or exactly one video file, with an optional ``masks/`` folder of PNGs
(DAVIS palette PNGs, pixel = object id, or binary 0/255 PNGs = one object).

Masks that are inpainting holes rather than segmentation ground truth (dilated, or
covering shadows) must never be scored as segmentation.  A clip is marked *dilated*
when the data folder's ``PROVENANCE.md`` summary row for it says "dilated" (and not
"not dilated"), or when the clip folder holds a file named ``DILATED``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unseen.engine.masks import MaskFolder, read_label_map
from unseen.engine.media import IMAGE_SUFFIXES, Source

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")


@dataclass
class Clip:
    name: str
    folder: Path
    source: Path  # the frames/ folder or the video file
    masks: Path | None  # the masks/ folder
    dilated: bool  # masks are inpainting holes (not segmentation ground truth)
    width: int
    height: int
    frames: int | None  # frame count when known without decoding
    rate: float

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def tight_masks(self) -> bool:
        """Masks usable as segmentation ground truth and as object shapes."""
        return self.masks is not None and not self.dilated

    def describe(self) -> dict:
        return {"name": self.name, "source": str(self.source), "size": f"{self.width}x{self.height}",
                "frames": self.frames, "masks": self.masks is not None, "dilated_masks": self.dilated}

    def read_frames(self, limit: int | None = None, size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Decoded RGB frames (at most ``limit``), resized to ``size`` = (w, h) when given."""
        out = []
        with Source(self.source) as src:
            for frame in src:
                if limit is not None and len(out) >= limit:
                    break
                img = frame.image
                if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
                    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
                out.append(img)
        return out

    def read_labels(self, limit: int | None = None, size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Per-frame object-id maps (uint8), nearest-neighbour resized to ``size`` when given."""
        if self.masks is None:
            raise ValueError(f"clip {self.name} has no masks")
        folder = MaskFolder(self.masks)
        files = folder.files[:limit] if limit is not None else folder.files
        out = []
        for p in files:
            lab = read_label_map(p)
            if size is not None and (lab.shape[1], lab.shape[0]) != tuple(size):
                lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
            out.append(lab)
        return out


def segmentation_clips(clips: list[Clip]) -> tuple[list[Clip], list[dict]]:
    """The clips whose masks are segmentation ground truth, and why each clip with dilated masks is skipped."""
    tight = [c for c in clips if c.tight_masks]
    skipped = [{"clip": c.name, "reason": "masks are dilated inpainting holes, not segmentation GT"}
               for c in clips if c.has_masks and c.dilated]
    return tight, skipped


def _provenance_dilated(data: Path) -> set[str]:
    """Clip names whose PROVENANCE.md summary row says their masks are dilated."""
    path = data / "PROVENANCE.md"
    names: set[str] = set()
    if not path.is_file():
        return names
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not cells:
            continue
        row = line.lower()
        if re.search(r"\bdilated\b", row) and "not dilated" not in row:
            names.add(Path(cells[0]).name)
    return names


def discover(data: str | Path) -> list[Clip]:
    """Every clip in ``data`` (sorted by name); folders that are not clips are skipped."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {str(data)!r} does not exist; give --data DIR")
    dilated_names = _provenance_dilated(data)
    clips = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        frames = folder / "frames"
        videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if frames.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in frames.iterdir()):
            source = frames
        elif len(videos) == 1:
            source = videos[0]
        else:
            continue
        masks = folder / "masks"
        has_masks = masks.is_dir() and any(p.suffix.lower() == ".png" for p in masks.iterdir())
        with Source(source) as src:
            info = src.info
        clips.append(Clip(folder.name, folder, source, masks if has_masks else None,
                          folder.name in dilated_names or (folder / "DILATED").exists(),
                          info.width, info.height, info.frames, float(info.rate)))
    return clips


def largest_object(labels: np.ndarray) -> int:
    """The object id with the most pixels in ``labels`` (ties: the smallest id)."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    if ids.size == 0:
        raise ValueError("no object in the first mask")
    return int(ids[np.argmax(counts)])


def pairs(clips: list[Clip]) -> list[tuple[Clip, Clip]]:
    """Deterministic (object clip A, background clip B) pairs.

    Every clip is a background B once; its A is the next clip after it in name order
    (cyclically) whose masks are tight object masks, never B itself.
    """
    sources = [c for c in clips if c.tight_masks]
    out = []
    for b in clips:
        start = clips.index(b)
        for k in range(1, len(clips) + 1):
            a = clips[(start + k) % len(clips)]
            if a is not b and a in sources:
                out.append((a, b))
                break
    return out
