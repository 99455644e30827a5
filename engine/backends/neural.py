"""What the neural backends share: loading official weights and the optional compile step."""
from __future__ import annotations

from torch import nn

from .registry import BackendError, BackendOptions


def load_weights(name: str, options: BackendOptions) -> nn.Module:
    """The model ``name`` with its official checkpoint from the weights folder (strict keys).

    A missing or unfit file becomes a :class:`BackendError` whose message names the
    ``unseen weights`` command that fixes it.
    """
    from unseen.weights.loading import load_model
    from unseen.weights.registry import WeightsError

    try:
        return load_model(name, device=options.device, weights_dir=options.weights_dir)
    except WeightsError as exc:
        raise BackendError(str(exc)) from exc


def compile_module(module: nn.Module, how: str) -> nn.Module:
    """``how``: none | torch (``torch.compile``) | tensorrt (torch-tensorrt; untested on our machines)."""
    import torch

    if how in ("none", "", None):
        return module
    if how == "torch":
        return torch.compile(module, dynamic=True)
    if how == "tensorrt":
        try:
            import torch_tensorrt  # noqa: F401 - registers the backend
        except ImportError as exc:
            raise BackendError("compile=tensorrt needs torch-tensorrt, which is not installed; "
                               "`pip install 'unseen[tensorrt]'` or use --compile torch") from exc
        return torch.compile(module, backend="torch_tensorrt", dynamic=True)
    raise BackendError(f"unknown compile mode {how!r}; use none, torch or tensorrt")
