"""Loading the official checkpoints strictly into the models built here: a file given, or the one in the
weights folder (:mod:`.store`), checked by :mod:`.checkpoint` before it is loaded.  Files another runtime
reads (NanoTrack's ONNX files, for OpenCV) are handed over by :func:`installed` after their sha256 is checked."""
from __future__ import annotations

import os

import torch
from torch import nn

from . import store
from .checkpoint import (CheckReport, PathOrStateDict, build, check, load_state_dict, read_and_check,
                         read_checkpoint, tolerated_missing, unwrap)
from .registry import CheckpointError, MissingWeightsError, get
from .store import InstalledFiles, installed

__all__ = ["CheckReport", "InstalledFiles", "build", "check", "installed", "load_model", "load_state_dict",
           "read_checkpoint", "tolerated_missing", "unwrap"]


def load_model(name: str, path_or_state_dict: PathOrStateDict | None = None, device: str | torch.device = "cpu",
               weights_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build model ``name``, load its checkpoint strictly and return it in eval mode on ``device``.

    Without ``path_or_state_dict`` the official file is taken from the weights
    folder (``weights_dir``, else ``$UNSEEN_WEIGHTS``, else ``~/.cache/unseen/weights``);
    :class:`MissingWeightsError` names the commands that put it there.  A file that
    does not fit raises :class:`CheckpointError`.
    """
    entry = get(name)
    source = path_or_state_dict
    if source is None:
        source = store.find(entry.name, weights_dir)
        if source is None:
            raise MissingWeightsError(
                f"weights {entry.name} ({entry.filename}) not found in {store.weights_dir(weights_dir)}; run "
                f"`unseen weights fetch {entry.name}` or, offline, `unseen weights import {entry.name} FILE`")
    model = build(entry.name)
    state, report = read_and_check(source, entry.name, model)
    if not report.ok:
        raise CheckpointError(f"{report.source} {report.message}")
    model.load_state_dict(state, strict=False)  # strictness established by the report above
    return model.eval().to(device)
