"""Milliseconds per stage call: totals for metrics and benchmarks, the latest calls for a live histogram."""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

RECENT_STAGE_SAMPLES = 1024  # per-call durations kept for a live histogram (drop policy: oldest first)


@dataclass(frozen=True)
class StageSample:
    """The duration of one stage call."""

    stage: str
    ms: float


@dataclass
class StageTimes:
    """Milliseconds spent per stage (totals and counts) for metrics and benchmarks, and the latest
    per-call durations (bounded, oldest dropped) for whoever :meth:`drain` s them (the live histogram).

    Written by the engine and prompt threads, read from any thread: the dicts are replaced, never
    mutated, so a reader always iterates a consistent snapshot."""

    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    recent: collections.deque[StageSample] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_STAGE_SAMPLES), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.totals = {**self.totals, stage: self.totals.get(stage, 0.0) + seconds * 1000.0}
            self.counts = {**self.counts, stage: self.counts.get(stage, 0) + 1}
            self.recent.append(StageSample(stage, seconds * 1000.0))

    def drain(self) -> list[StageSample]:
        """The per-call durations recorded since the last drain (at most RECENT_STAGE_SAMPLES), oldest first."""
        with self._lock:
            samples = list(self.recent)
            self.recent.clear()
        return samples

    def mean_ms(self, stage: str) -> float:
        count = self.counts.get(stage, 0)
        return self.totals.get(stage, 0.0) / count if count else 0.0

    def means(self) -> dict[str, float]:
        """Mean milliseconds per call of every stage seen so far (rounded to 0.01)."""
        return {stage: round(self.mean_ms(stage), 2) for stage in self.counts}
