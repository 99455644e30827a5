"""Prometheus metrics of ``unseen serve`` (one registry per server, so tests can run several).

Every metric exists (at zero, or with no stream label yet) before the first stream starts.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("segment", "propagate", "inpaint")
LEVELS = ("cheap_fill", "reduced_tracking", "stale_masks")  # degradation levels (engine/degrade.py)
MS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams = Gauge("unseen_streams", "Streams being served", registry=r)
        self.viewers = Gauge("unseen_viewers", "WebRTC viewers, all streams", registry=r)
        self.stream_viewers = Gauge("unseen_stream_viewers", "WebRTC viewers of a stream", ["stream"], registry=r)
        self.frames_in = Counter("unseen_stream_frames_in", "Frames entering the pipeline", ["stream"], registry=r)
        self.frames_out = Counter("unseen_stream_frames_out", "Frames leaving the delay line", ["stream"],
                                  registry=r)
        self.dropped = Counter("unseen_stream_dropped", "Decoded frames dropped before processing (queue full)",
                               ["stream"], registry=r)
        self.degraded = Counter("unseen_stream_degraded", "Frames given the cheap fill to hold the delay",
                                ["stream"], registry=r)
        self.degraded_frames = Counter("unseen_stream_degraded_frames", "Frames leaving a stream degraded, by "
                                       "level: cheap_fill, reduced_tracking, stale_masks (engine/degrade.py)",
                                       ["stream", "level"], registry=r)
        self.reconnects = Counter("unseen_stream_reconnects", "Source reconnections", ["stream"], registry=r)
        self.skipped = Counter("unseen_stream_skipped", "Input frames that could not be decoded (skipped)",
                               ["stream"], registry=r)
        self.delay_frames = Gauge("unseen_delay_frames", "Fixed output delay of a stream, frames", ["stream"],
                                  registry=r)
        self.fps = Gauge("unseen_stream_fps", "Output frame rate of a stream", ["stream"], registry=r)
        self.stage_ms = Histogram("unseen_stage_ms", "Milliseconds per stage call", ["stage"],
                                  buckets=MS_BUCKETS, registry=r)
        for stage in STAGES:
            self.stage_ms.labels(stage)  # exists at zero

    def forget(self, stream: str) -> None:
        for metric in (self.stream_viewers, self.frames_in, self.frames_out, self.dropped, self.degraded,
                       self.reconnects, self.skipped, self.delay_frames, self.fps):
            try:
                metric.remove(stream)
            except KeyError:
                pass
        for level in LEVELS:
            try:
                self.degraded_frames.remove(stream, level)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
