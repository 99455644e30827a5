"""What the neural backends share: loading official weights, the optional compile step, and one copy of each
model per device for every stream of the process."""
from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Callable, Hashable

import torch
from torch import nn

from .registry import BackendError, BackendOptions


log = logging.getLogger("unseen.neural")

#: autocast dtype of each precision; tf32 keeps fp32 tensors and lets CUDA run their matrix products and
#: convolutions on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "tf32": None, "fp16": torch.float16,
                                             "bf16": torch.bfloat16}


def stage_precision(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` option (None: fp32 tensors), and for ``tf32`` on CUDA TF32
    switched on.  torch's TF32 switch is process-wide: once a stage asks for it, every CUDA fp32 matrix
    product and convolution of the process runs in TF32 (cuDNN's convolutions already do by default).  On
    CPU tf32 is plain fp32."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if precision == "tf32" and torch.device(device).type == "cuda" and not torch.backends.cuda.matmul.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log.info("tf32: CUDA fp32 matrix products and convolutions of this process run on TF32 tensor cores")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """A stage's mixed precision on ``device``: the same autocast on CUDA and on CPU (where it is slower,
    but lets the precision checks run on machines without a GPU); ``dtype`` None runs in fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


class ModelCache:
    """One model per key (weights, device, precision, compile mode) for every stream of the process.

    Streams on a device share the module (inference only: the per-stream memory, AOT's bank or SAM's
    features, lives in each stream's backend, never in the module).  Entries are weak: a model is freed
    with the last stream that uses it, so the cache holds nothing on its own (bounded by the live streams)."""

    def __init__(self) -> None:
        self._models: dict[Hashable, weakref.ref[nn.Module]] = {}
        self._lock = threading.Lock()
        self.builds = 0  # models built (not taken from the cache), for tests and the log

    def get(self, key: Hashable, build: Callable[[], nn.Module]) -> nn.Module:
        with self._lock:  # one build per key even when streams start together
            ref = self._models.get(key)
            model = ref() if ref is not None else None
            if model is None:
                model = build()
                self.builds += 1
                self._models[key] = weakref.ref(model)
            return model


MODELS = ModelCache()


def model_key(weights: str, options: BackendOptions) -> tuple:
    """What makes two streams' copies of model ``weights`` the same one: device, precision, compile mode, and
    the checkpoint file as it is now (a file imported again gives new streams the new weights)."""
    random = bool(options.extra.get("random_weights"))
    return (weights, str(options.device), options.precision, options.compile, random,
            None if random else _file_identity(weights, options))


def _file_identity(weights: str, options: BackendOptions) -> tuple | None:
    from unseen.weights.registry import WeightsError
    from unseen.weights.store import find

    try:
        path = find(weights, options.weights_dir)
    except WeightsError:  # an unknown name: loading it names the problem
        return None
    if path is None:
        return None
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size
