"""Backend registry: stage name -> implementations, and the ``auto`` choice.

A backend is named ``kind`` or ``kind:variant`` (``classical``, ``sam:vit_b``,
``aot:r50_aotl``, ``e2fgvi:hq``, ``classical+nanotrack``).  Each kind points to a factory
``create(variant: str | None, options: BackendOptions) -> stage`` that is imported
lazily, so the classical path never imports torch.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from unseen.weights.registry import REGISTRY as WEIGHTS

from ..flow import FlowCache

log = logging.getLogger("unseen.backends")

STAGES = ("segmenter", "propagator", "inpainter")

# stage -> kind -> "module:factory"
_FACTORIES: dict[str, dict[str, str]] = {
    "segmenter": {
        "classical": "unseen.engine.backends.classical_segment:create",
        "sam": "unseen.engine.backends.sam:create",
    },
    "propagator": {
        "classical": "unseen.engine.backends.classical_propagate:create",
        "classical+nanotrack": "unseen.engine.backends.guided:create",
        "aot": "unseen.engine.backends.aot:create",
    },
    "inpainter": {
        "classical": "unseen.engine.backends.classical_inpaint:create",
        "e2fgvi": "unseen.engine.backends.e2fgvi:create",
    },
}

# The neural default of each stage for ``auto``: (kind, variant, weights names in preference order)
AUTO_NEURAL: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "segmenter": ("sam", [("vit_h", "sam_vit_h"), ("vit_l", "sam_vit_l"), ("vit_b", "sam_vit_b")]),
    "propagator": ("aot", [("r50_deaotl", "r50_deaotl"), ("deaotl", "deaotl"), ("r50_aotl", "r50_aotl"),
                           ("swinb_deaotl", "swinb_deaotl"), ("deaotb", "deaotb"), ("deaott", "deaott"),
                           ("aotl", "aotl"), ("aott", "aott")]),
    "inpainter": ("e2fgvi", [("hq", "e2fgvi_hq"), ("e2fgvi", "e2fgvi")]),
}

# What ``auto`` picks when no neural weights are present but a learned guide's are: (backend, weights name)
AUTO_GUIDED: dict[str, tuple[str, str]] = {"propagator": ("classical+nanotrack", "nanotrack_v2")}


class BackendError(RuntimeError):
    """A backend cannot be created (unknown name, missing weights, missing package)."""


@dataclass
class BackendOptions:
    """Settings every factory may read; unknown stage-specific ones go in ``extra``."""

    device: str = "cpu"
    weights_dir: Path | None = None
    precision: str = "fp32"  # fp32 | tf32 (CUDA only) | fp16 | bf16 (autocast)
    compile: str = "none"  # none | torch | tensorrt
    memory_cap: int = 8  # propagator: long-term memory frames kept (reference frames included)
    memory_gap: int = 5  # propagator: add a long-term memory every `gap` frames
    future: int = 5  # inpainter: future neighbour frames (its share of the fixed delay)
    past: int = 5  # inpainter: past neighbour frames
    ref_stride: int = 10  # inpainter: one past reference frame every `ref_stride` frames
    ref_count: int = 3  # inpainter: past reference frames kept
    dilation: int = 4  # inpainter: hole dilation (3x3 cross iterations)
    # classical propagator and inpainter: the engine.flow.FlowCache they share (one per stream is best;
    # None: the process's own, bounded, shared by every stream)
    flows: FlowCache | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_name(name: str) -> tuple[str, str | None]:
    kind, _, variant = name.partition(":")
    return kind.strip().lower(), (variant.strip().lower() or None)


def kinds(stage: str) -> list[str]:
    return sorted(_FACTORIES[stage])


def _factory(stage: str, kind: str) -> Callable[..., Any]:
    if stage not in _FACTORIES:
        raise BackendError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    try:
        target = _FACTORIES[stage][kind]
    except KeyError:
        raise BackendError(
            f"unknown {stage} backend {kind!r}; use one of: auto, {', '.join(kinds(stage))}"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a missing optional package
        raise BackendError(f"{stage} backend {kind!r} needs a package that is not installed ({exc}); "
                           f"reinstall with `pip install unseen`") from exc
    return getattr(module, attr)


def resolve_auto(stage: str, options: BackendOptions) -> str:
    """The backend name ``auto`` means: the best neural one whose weights are present, else the classical one
    guided by a learned box tracker when its weights are (the propagator), else classical."""
    kind, candidates = AUTO_NEURAL[stage]
    try:
        from unseen.weights import store
    except ImportError:  # pragma: no cover - weights module not installed
        return "classical"
    for variant, weights_name in candidates:
        if _present(store, weights_name, options):
            return f"{kind}:{variant}"
    guided = AUTO_GUIDED.get(stage)
    if guided is not None and _present(store, guided[1], options):
        return guided[0]
    return "classical"


def _present(store: Any, weights_name: str, options: BackendOptions) -> bool:
    try:
        return store.find(weights_name, options.weights_dir) is not None
    except Exception:  # noqa: BLE001 - a broken weights folder must not break auto
        log.debug("weights lookup for %s failed", weights_name, exc_info=True)
        return False


def create(stage: str, name: str, options: BackendOptions | None = None) -> Any:
    """Build the backend ``name`` (or ``auto``) for ``stage`` and log the choice."""
    options = options or BackendOptions()
    requested = name
    if parse_name(name)[0] == "auto":
        name = resolve_auto(stage, options)
    kind, variant = parse_name(name)
    backend = _factory(stage, kind)(variant, options)
    label = name if requested == name else f"{name} (auto)"
    backend.name = label
    log.info("%s backend: %s%s", stage, label, _guide_hint(stage, name, requested))
    return backend


def _guide_hint(stage: str, name: str, requested: str) -> str:
    """Where ``auto`` ran the plain classical backend because a learned guide's weights are absent: how to add it."""
    guided = AUTO_GUIDED.get(stage)
    if guided is None or name != "classical" or requested == name:
        return ""
    entry = WEIGHTS[guided[1]]  # what the weights registry says of it: no second description to keep in step
    return (f"; `unseen weights fetch {entry.name}` adds {entry.description}, "
            f"{(entry.size or 0) / 1e6:.1f} MB, {entry.licence}, to guide it")
