"""Model checkpoints: the registry of supported files, the weights folder, strict loading.

``load_model(name)`` returns a model with its official weights loaded strictly;
``find(name)`` says whether a checkpoint is installed; ``installed(name)`` hands over the checked files of a
multi-file entry (NanoTrack's ONNX files).  The ``unseen weights``
commands (``weights.cli``) fetch, import and verify them.  Only this package does I/O.
"""
from .registry import WeightsError
from .store import InstalledFiles, find, installed

__all__ = ["InstalledFiles", "WeightsError", "find", "installed", "load_model"]


def __getattr__(name: str):
    if name == "load_model":  # on first use: it imports torch, which the classical path never needs
        from .loading import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
