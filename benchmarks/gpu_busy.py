"""How busy the GPU was during a run: NVML's utilisation (the share of time a kernel ran), sampled.

On the lent H200 the neural stages left the GPU idle most of the time (host-bound: kernel launches);
this figure beside each run's fps says whether a change moved work off the host or only reshuffled it.
None on the CPU, or where NVML (the `nvidia-ml-py` package) is missing.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("unseen.benchmarks")

PERIOD_S = 0.05  # NVML's own sample window is about 1/6 to 1 s: faster polling only repeats values


class GpuBusy:
    """Samples ``read()`` (percent) every ``period`` seconds between entering and leaving the context."""

    def __init__(self, read: Callable[[], float] | None, period: float = PERIOD_S) -> None:
        self.read = read
        self.period = period
        self.samples: list[float] = []
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def on(cls, device: str) -> "GpuBusy":
        """A sampler of ``device`` ("cuda", "cuda:N"); one that samples nothing elsewhere."""
        return cls(_nvml_reader(device) if device.startswith("cuda") else None)

    def __enter__(self) -> "GpuBusy":
        if self.read is not None:
            self._thread = threading.Thread(target=self._loop, name="gpu-busy", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        assert self.read is not None
        while not self.stopped.is_set():
            value = self.read()
            if self.stopped.is_set():  # read while the run ended: not part of it
                break
            self.samples.append(float(value))
            self.stopped.wait(self.period)

    @property
    def percent(self) -> float | None:
        """Mean utilisation over the run's samples (None: nothing sampled)."""
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def _nvml_reader(device: str) -> Callable[[], float] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(device.partition(":")[2] or 0))
    except Exception as exc:  # noqa: BLE001 - no NVML: the figure is simply absent
        log.info("GPU utilisation not sampled: %s", exc)
        return None
    return lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
