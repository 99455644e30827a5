"""Reading checkpoints and checking them strictly against the models built here (no weights folder: see
:mod:`.store`; :func:`unseen.weights.loading.load_model` puts the two together).

Files are read with ``torch.load(weights_only=True)``: a file holding arbitrary
Python objects is refused, never executed.  The official containers are
unwrapped (``{'state_dict': ...}`` of the AOT trainer, ``{'model': ...}``, a bare
state dict as SAM and E2FGVI ship it) and DDP's ``module.`` prefixes stripped.
Loading is strict, except that the AOT (non-DeAOT) checkpoints of 2021 lack
exactly ``LSTT.mask_token`` (``unseen.engine.models.aot.AOT2021_MISSING_KEYS``
when that module defines it), which the current model code has.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .registry import CheckpointError, MissingWeightsError, WeightsEntry, get

if TYPE_CHECKING:  # torch is imported where a checkpoint is read: the classical path never loads it (2 s)
    import torch
    from torch import nn

StateDict = dict[str, "torch.Tensor"]
PathOrStateDict = Union[str, "os.PathLike[str]", Mapping[str, Any]]

_PREFIX = "module."
_AOT2021_FALLBACK = ("LSTT.mask_token",)


def _aot2021_missing_keys() -> tuple[str, ...]:
    """The keys 2021 AOT checkpoints lack: the model module's constant if it defines one."""
    try:
        from unseen.engine.models.aot import AOT2021_MISSING_KEYS
    except ImportError:
        return _AOT2021_FALLBACK
    return tuple(AOT2021_MISSING_KEYS)


def tolerated_missing(entry: WeightsEntry) -> tuple[str, ...]:
    """Keys a checkpoint of ``entry`` may lack: the 2021 AOT keys for AOT (non-DeAOT) models."""
    if entry.family == "aot" and "deaot" not in entry.model:
        return _aot2021_missing_keys()
    return ()


def _fix_hint(name: str) -> str:
    what = "DIR" if get(name).multi else "FILE"
    return f"run `unseen weights fetch {name}` or `unseen weights import {name} {what}`"


def is_torch_archive(path: Path | str) -> bool:
    """Whether ``path`` is a zip written by ``torch.save`` (as opposed to a plain zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("data.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_checkpoint(path: str | os.PathLike[str], name: str) -> Any:
    """``torch.load`` the file on the CPU with ``weights_only=True``, translating failures.

    Raises :class:`MissingWeightsError` if it does not exist, :class:`CheckpointError`
    (one line, naming the fix) if it is not a readable tensor-only checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path} does not exist; {_fix_hint(name)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler fails on garbage in many ways
        text = str(exc)
        with open(path, "rb") as handle:
            head = handle.read(4)
        if "Unsupported global" in text:
            cause = "it holds arbitrary Python objects, which safe (weights_only) loading refuses"
        elif zipfile.is_zipfile(path) and not is_torch_archive(path):
            cause = "a zip archive, not a checkpoint: unpack it first"
        elif head == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle
            cause = "truncated or corrupt (" + (text.splitlines() or [type(exc).__name__])[0][:80] + ")"
        else:
            cause = "not a torch checkpoint"
    raise CheckpointError(f"{path.name} is not a usable {name} checkpoint: {cause}; {_fix_hint(name)}")


def unwrap(obj: Any, name: str = "checkpoint") -> tuple[StateDict, str, bool]:
    """The state dict inside a loaded checkpoint: ``(state_dict, container, prefix_stripped)``.

    ``container`` is ``"state_dict"``, ``"model"`` or ``"bare"``; every other entry
    of a container (optimizer, scaler, ...) is ignored.
    """
    import torch

    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{name}: the file holds a {type(obj).__name__}, not a state dict; {_fix_hint(name)}")
    container = "bare"
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj, container = obj[key], key
            break
    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not obj or non_tensors:
        shown = ", ".join(map(str, (non_tensors or list(obj))[:4])) or "nothing"
        raise CheckpointError(f"{name}: no state dict found (non-tensor entries: {shown}); {_fix_hint(name)}")
    stripped = any(str(k).startswith(_PREFIX) for k in obj)
    state = {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in obj.items()}
    return state, container, stripped


def load_state_dict(path_or_state_dict: PathOrStateDict, name: str) -> StateDict:
    """The unwrapped, prefix-stripped state dict of a file (or of an already loaded object)."""
    return _read(path_or_state_dict, name)[0]


def build(name: str) -> nn.Module:
    """Build the model of weights ``name`` with random weights (no I/O)."""
    entry = get(name)
    if entry.family == "sam":
        from segment_anything import sam_model_registry

        return sam_model_registry[entry.model](checkpoint=None)
    from unseen.engine import models

    return models.build_model(entry.model)


@dataclass
class CheckReport:
    """The result of checking a file against a model; :attr:`verdict` is one line."""

    name: str
    source: str
    ok: bool
    container: str = ""
    prefix_stripped: bool = False
    tensors: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def verdict(self) -> str:
        status = "OK" if self.ok else "FAIL"
        if self.message.startswith(self.source):
            return f"{status} {self.name}: {self.message}"
        return f"{status} {self.name}: {self.source} {self.message}"


def _compare(model: nn.Module, state: StateDict, allowed: tuple[str, ...]) -> tuple[list, list, list, list]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    tolerated = [k for k in missing if k in allowed]
    return [k for k in missing if k not in allowed], unexpected, mismatched, tolerated


def _summary(missing: list[str], unexpected: list[str], mismatched: list) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
    if mismatched:
        key, got, want = mismatched[0]
        parts.append(f"{len(mismatched)} shape mismatch(es) (e.g. {key}: file {list(got)} vs model {list(want)})")
    return "; ".join(parts)


def _check_state(model: nn.Module, name: str, state: StateDict, container: str, stripped: bool,
                 source: str) -> CheckReport:
    entry = get(name)
    missing, unexpected, mismatched, tolerated = _compare(model, state, tolerated_missing(entry))
    report = CheckReport(name=entry.name, source=source, ok=not (missing or unexpected or mismatched),
                         container=container, prefix_stripped=stripped, tensors=len(state), missing=missing,
                         unexpected=unexpected, mismatched=mismatched, tolerated=tolerated)
    if report.ok:
        layout = f"{container} container" + (", 'module.' prefixes stripped" if stripped else "")
        extra = f"; 2021 AOT layout, kept built value of {', '.join(tolerated)}" if tolerated else ""
        report.message = f"loads strictly ({len(state)} tensors, {layout}{extra})"
    else:
        report.message = (f"does not fit {entry.model}: {_summary(missing, unexpected, mismatched)}; "
                          f"{_fix_hint(entry.name)}")
    return report


def _label(source: PathOrStateDict) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "<state dict>"


def _read(source: PathOrStateDict, name: str) -> tuple[StateDict, str, bool]:
    obj = read_checkpoint(source, name) if isinstance(source, (str, os.PathLike)) else source
    return unwrap(obj, name)


def check(file: PathOrStateDict, name: str) -> CheckReport:
    """Check that ``file`` (a path or a loaded checkpoint) loads strictly into model ``name``.

    Never raises for a bad file: the problem is in the report.
    """
    entry = get(name)
    if entry.multi:
        return _check_hashed(file, entry)
    try:
        state, container, stripped = _read(file, entry.name)
    except (CheckpointError, MissingWeightsError) as exc:
        return CheckReport(name=entry.name, source=_label(file), ok=False, message=str(exc))
    return _check_state(build(entry.name), entry.name, state, container, stripped, _label(file))


def _check_hashed(file: PathOrStateDict, entry: WeightsEntry) -> CheckReport:
    """A file of a multi-file entry (not a torch checkpoint): it is one of the entry's files by its sha256."""
    label = _label(file)
    if not isinstance(file, (str, os.PathLike)) or not Path(file).is_file():
        return CheckReport(name=entry.name, source=label, ok=False,
                           message=f"{label} is not a file; {_fix_hint(entry.name)}")
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    match = next((f.filename for f in entry.files if f.sha256 == digest), None)
    if match is None:
        return CheckReport(name=entry.name, source=label, ok=False, message=(
            f"matches none of the official files ({', '.join(f.filename for f in entry.files)}) by sha256; "
            f"{_fix_hint(entry.name)}"))
    return CheckReport(name=entry.name, source=label, ok=True, message=f"is the official {match} (sha256)")


def read_and_check(source: PathOrStateDict, name: str, model: nn.Module) -> tuple[StateDict, CheckReport]:
    """The unwrapped state dict of ``source`` and how it fits ``model`` (built for weights ``name``)."""
    state, container, stripped = _read(source, name)
    return state, _check_state(model, name, state, container, stripped, _label(source))
