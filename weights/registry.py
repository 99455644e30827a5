"""Every checkpoint Unseen can use: where it comes from, what it is, how to check it.

An entry's ``name`` is what the ``unseen weights`` commands take; ``model`` is
what gets built for it (a ``segment_anything.sam_model_registry`` kind for SAM,
an ``unseen.engine.models.build_model`` name otherwise).  ``size``/``sha256`` are
filled only where the official value is known; a ``None`` means "unknown: verified
on import by loading" (a strict load into the model built here).

This module also defines the exceptions of :mod:`unseen.weights`; each message is
one line that names the ``unseen weights ...`` command fixing it.
"""
from __future__ import annotations

from dataclasses import dataclass

SAM_LICENCE = "Apache-2.0"
AOT_LICENCE = "BSD-3-Clause code; no separate weights statement"
E2FGVI_LICENCE = "CC BY-NC 4.0 (non-commercial)"
NANOTRACK_LICENCE = "Apache-2.0"

FAMILIES = ("sam", "aot", "e2fgvi", "nanotrack")

_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
_DRIVE = "https://drive.google.com/uc?export=download&id="
_UNKNOWN = "unknown: verified on import by loading"
_NANOTRACK_BASE = ("https://raw.githubusercontent.com/HonglinChu/SiamTrackers/"
                   "248663fde6bf7c40190cf10ee396d5662919ecd3/NanoTrack/models/nanotrackv2/")


class WeightsError(Exception):
    """Base class of every weights error; ``str()`` is one line naming the fix."""


class UnknownWeightsError(WeightsError, KeyError):
    """A weights name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """The checkpoint is not in the weights folder."""


class DownloadError(WeightsError):
    """A download failed (network, server, interrupted)."""


class ChecksumError(WeightsError):
    """A file's size or sha256 differs from the official value."""


class CheckpointError(WeightsError):
    """A file is not a usable checkpoint of the model (corrupt, wrong keys or shapes)."""


@dataclass(frozen=True)
class WeightsFile:
    """One file of a multi-file entry, stored in the entry's folder under its official name."""

    filename: str
    urls: tuple[str, ...]
    size: int
    sha256: str


@dataclass(frozen=True)
class WeightsEntry:
    """One supported checkpoint: a single file, or (``files``) a folder of several."""

    name: str
    family: str  # "sam" | "aot" | "e2fgvi" | "nanotrack"
    model: str  # SAM kind (vit_b...), unseen.engine.models.build_model name, or the runtime's model name
    filename: str  # the official file name, also its name in the weights folder (a folder for ``files``)
    urls: tuple[str, ...]  # download sources, in order of preference (a multi-file entry: its files' own)
    size: int | None  # bytes, None when unknown (a multi-file entry: all its files)
    sha256: str | None  # lowercase hex, None when unknown (None for a multi-file entry: see its files)
    licence: str
    description: str
    note: str = ""  # provenance remarks (unconfirmed sizes, archive quirks)
    files: tuple[WeightsFile, ...] = ()  # a multi-file entry's files (each with its own URL and sha256)

    @property
    def url(self) -> str:
        """The preferred download URL."""
        return self.urls[0]

    @property
    def multi(self) -> bool:
        """Whether the entry is a folder of several files."""
        return bool(self.files)

    @property
    def integrity(self) -> str:
        """How a file is recognised as this checkpoint, for listings."""
        if self.sha256 or (self.files and all(f.sha256 for f in self.files)):
            return "sha256"
        return "size+load" if self.size else _UNKNOWN


def _sam(kind: str, filename: str, size: int, sha256: str, description: str) -> WeightsEntry:
    return WeightsEntry(
        name=f"sam_{kind}", family="sam", model=kind, filename=filename, urls=(_SAM_BASE + filename,),
        size=size, sha256=sha256, licence=SAM_LICENCE, description=description,
    )


def _aot(name: str, stem: str, drive_id: str, description: str, note: str = "") -> WeightsEntry:
    return WeightsEntry(
        name=name, family="aot", model=name, filename=f"{stem}_PRE_YTB_DAV.pth", urls=(_DRIVE + drive_id,),
        size=None, sha256=None, licence=AOT_LICENCE, description=description, note=note,
    )


def _e2fgvi(name: str, filename: str, drive_id: str, description: str) -> WeightsEntry:
    return WeightsEntry(
        name=name, family="e2fgvi", model=name, filename=filename, urls=(_DRIVE + drive_id,),
        size=None, sha256=None, licence=E2FGVI_LICENCE, description=description,
        note="the README says to unzip the download; a zip holding the .pth is unpacked on fetch/import",
    )


def _nanotrack(name: str, files: tuple[tuple[str, int, str], ...], description: str) -> WeightsEntry:
    parts = tuple(WeightsFile(f, (_NANOTRACK_BASE + f,), size, sha) for f, size, sha in files)
    return WeightsEntry(
        name=name, family="nanotrack", model=name, filename=name, urls=tuple(_NANOTRACK_BASE + f for f, _, _ in files),
        size=sum(p.size for p in parts), sha256=None, licence=NANOTRACK_LICENCE, description=description,
        note="HonglinChu/SiamTrackers at 248663f, NanoTrack/models/nanotrackv2/; run by OpenCV's TrackerNano",
        files=parts,
    )


_ENTRIES = (
    _sam("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
         "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
         "Segment Anything ViT-H (636M params): best masks, slowest"),
    _sam("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
         "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
         "Segment Anything ViT-L (308M params)"),
    _sam("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
         "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
         "Segment Anything ViT-B (91M params): fastest SAM"),
    _aot("aott", "AOTT", "1owPmwV4owd_ll6GuilzklqTyAd0ZvbCu", "AOT-T, MobileNetV2, 1 LSTT layer (5.7M params)"),
    _aot("aots", "AOTS", "1beU5E6Mdnr_pPrgjWvdWurKAIwJSz1xf", "AOT-S, MobileNetV2, 2 LSTT layers (7.0M params)"),
    _aot("aotb", "AOTB", "1hH-GOn4GAxHkV8ARcQzsUy8Ax6ndot-A", "AOT-B, MobileNetV2, 3 LSTT layers (8.3M params)"),
    _aot("aotl", "AOTL", "1L1N2hkSPqrwGgnW9GyFHuG59_EYYfTG4",
         "AOT-L, MobileNetV2, 3 LSTT layers, long-term gap 5 (8.3M params)"),
    _aot("r50_aotl", "R50_AOTL", "1qJDYn3Ibpquu4ffYoQmVjg1YCbr2JQep", "R50-AOT-L, ResNet-50 encoder (14.9M params)"),
    _aot("swinb_aotl", "SwinB_AOTL", "192jCGQZdnuTsvX-CVra-KVZl2q1ZR0vW",
         "SwinB-AOT-L, Swin-B encoder (65.4M params)"),
    _aot("deaott", "DeAOTT", "1ThWIZQS03cYWx1EKNN8MIMnJS5eRowzr", "DeAOT-T, MobileNetV2, 1 GPM layer (7.2M params)"),
    _aot("deaots", "DeAOTS", "1YwIAV5tBtn5spSFxKLBQBEQGwPHyQlHi",
         "DeAOT-S, MobileNetV2, 2 GPM layers (10.2M params)"),
    _aot("deaotb", "DeAOTB", "1BHxsonnvJXylqHlZ1zJHHc-ymKyq-CFf",
         "DeAOT-B, MobileNetV2, 3 GPM layers (13.2M params)"),
    _aot("deaotl", "DeAOTL", "18elNz_wi9JyVBcIUYKhRdL08MA-FqHD5",
         "DeAOT-L, MobileNetV2, 3 GPM layers, long-term gap 5 (13.2M params)"),
    _aot("r50_deaotl", "R50_DeAOTL", "1QoChMkTVxdYZ_eBlZhK2acq9KMQZccPJ",
         "R50-DeAOT-L, ResNet-50 encoder (19.8M params)",
         note="one third-party manifest reports 236,513,959 bytes (not enforced)"),
    _aot("swinb_deaotl", "SwinB_DeAOTL", "1g4E-F0RPOx9Nd6J7tU9AE1TjsouL4oZq",
         "SwinB-DeAOT-L, Swin-B encoder (70.3M params)"),
    _e2fgvi("e2fgvi", "E2FGVI-CVPR22.pth", "1tNJMTJ2gmWdIXJoHVi5-H504uImUiJW9",
            "E2FGVI video inpainting, fixed 432x240 (41.8M params)"),
    _e2fgvi("e2fgvi_hq", "E2FGVI-HQ-CVPR22.pth", "10wGdKSUOie0XmCr8SQ2A2FeDe-mfn5w3",
            "E2FGVI-HQ video inpainting, any resolution (41.1M params)"),
    _nanotrack("nanotrack_v2", (
        ("nanotrack_backbone_sim.onnx", 1_056_849, "530bdd0cd00f19afab79a863e71ba71e3312395a5dc9151af675082bdaaa2fc4"),
        ("nanotrack_head_sim.onnx", 726_198, "0d8c0637be849f092cc7236cae02e55c8b9455ebe37ba50601d6115db4247cd9"),
    ), "NanoTrack V2 Siamese box tracker (MobileNetV3, ~334k params; two ONNX files)"),
)

#: name -> entry, in listing order (SAM, AOT, DeAOT, E2FGVI, NanoTrack)
REGISTRY: dict[str, WeightsEntry] = {entry.name: entry for entry in _ENTRIES}


def names(family: str | None = None) -> list[str]:
    """Registered names, optionally only those of ``family`` (sam, aot, e2fgvi, nanotrack)."""
    return [n for n, e in REGISTRY.items() if family is None or e.family == family]


def get(name: str) -> WeightsEntry:
    """The entry called ``name`` (case-insensitive); :class:`UnknownWeightsError` otherwise."""
    try:
        return REGISTRY[name.strip().lower()]
    except KeyError:
        raise UnknownWeightsError(
            f"unknown weights {name!r}; `unseen weights list` shows the known names ({', '.join(REGISTRY)})"
        ) from None
