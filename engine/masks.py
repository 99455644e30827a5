"""Mask files: DAVIS-style palette PNGs (object ids) or binary PNGs, read and written."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from .effects import palette_color
from .media import IMAGE_SUFFIXES, MediaError, _numbered


def _palette() -> list[int]:
    pal: list[int] = []
    for i in range(256):
        pal.extend(palette_color(i))
    return pal


def read_label_map(path: Path) -> np.ndarray:
    """Read one mask file as an object-id map (uint8): palette index, or >0 of a grey/binary image -> 1."""
    try:
        img = Image.open(path)
        img.load()
    except OSError as exc:
        raise MediaError(f"cannot read mask {str(path)!r} ({exc}); give PNG masks") from exc
    if img.mode == "P":
        return np.array(img, dtype=np.uint8)
    arr = np.array(img.convert("L"))
    return (arr > 127).astype(np.uint8)


def labels_to_masks(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(i): labels == i for i in np.unique(labels) if i != 0}


def masks_to_labels(masks: Mapping[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for oid in sorted(masks):
        labels[masks[oid]] = min(oid, 255)
    return labels


class MaskFolder:
    """Per-frame masks from a folder (one file per frame, in numbered order)."""

    def __init__(self, folder: str | Path, size: tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MediaError(f"mask folder {str(folder)!r} does not exist; give a folder of PNG masks")
        self.files = [p for p in _numbered(self.folder) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise MediaError(f"mask folder {str(folder)!r} holds no mask images; give PNG masks")
        self.size = size  # (width, height) the masks must have

    def __len__(self) -> int:
        return len(self.files)

    def labels(self, index: int) -> np.ndarray:
        if index >= len(self.files):
            return np.zeros((self.size[1], self.size[0]), np.uint8) if self.size else np.zeros((1, 1), np.uint8)
        labels = read_label_map(self.files[index])
        if self.size is not None and (labels.shape[1], labels.shape[0]) != tuple(self.size):
            raise MediaError(f"mask {self.files[index].name} is {labels.shape[1]}x{labels.shape[0]} but the video is "
                             f"{self.size[0]}x{self.size[1]}; give masks of the video's size")
        return labels

    def masks(self, index: int) -> dict[int, np.ndarray]:
        return labels_to_masks(self.labels(index))


class MaskWriter:
    """Writes one palette PNG per frame (DAVIS layout: 00000.png, ...; pixel = object id)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaError(f"cannot create mask folder {str(folder)!r} ({exc}); choose another folder") from exc
        self._palette = _palette()

    def write(self, index: int, masks: Mapping[int, np.ndarray], shape: tuple[int, int]) -> Path:
        img = Image.fromarray(masks_to_labels(masks, shape), mode="P")
        img.putpalette(self._palette)
        path = self.folder / f"{index:05d}.png"
        img.save(path)
        return path
