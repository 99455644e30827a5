"""Model checkpoints: the registry of supported files, the weights folder, strict loading.

``load_model(name)`` returns a model with its official weights loaded strictly;
``find(name)`` says whether a checkpoint is installed.  The ``unseen weights``
commands (``weights.cli``) fetch, import and verify them.  Only this package does I/O.
"""
from .loading import load_model
from .registry import WeightsError
from .store import find

__all__ = ["WeightsError", "find", "load_model"]
