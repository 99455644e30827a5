"""Giving a removed stream's memory back to the system.

A stream's frames, masks and flows are numpy buffers allocated on its threads (reader, worker,
prompt, sinks), so glibc serves them from several malloc arenas; once the stream is gone, nothing
holds them (no stream, pipeline or array survives its removal), but the freed chunks stay in the
arenas, fragmented, and the process's RSS stays where it peaked.  ``malloc_trim(0)`` returns the
free pages of every arena to the system (:func:`release_memory`); capping the arenas at 2
(:func:`limit_arenas`, as ``MALLOC_ARENA_MAX=2`` does) keeps a live stream's RSS flat instead of
creeping up as each thread's arena fragments.  On a C library without them (musl, macOS) both are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

log = logging.getLogger("unseen.memory")


@dataclass(frozen=True)
class Release:
    """What :func:`release_memory` did."""

    rss_before_mb: float
    rss_after_mb: float
    trimmed: bool  # False: this C library has no malloc_trim

    @property
    def freed_mb(self) -> float:
        return self.rss_before_mb - self.rss_after_mb


def rss_mb() -> float:
    """Resident set size of this process, MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)
ARENAS = 2


@lru_cache(maxsize=None)
def _libc_function(name: str, argtypes: tuple) -> Callable[..., int] | None:
    lib = ctypes.util.find_library("c")
    try:
        fn = getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = list(argtypes), ctypes.c_int
    return fn


def _malloc_trim() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim", (ctypes.c_size_t,))


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count`` unless ``MALLOC_ARENA_MAX`` is set (then glibc already
    applied that); True when capped here.  Call before the stream threads start."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, count) == 1)


def release_memory() -> Release:
    """Collect garbage, then return the C heap's free pages to the system (``malloc_trim(0)``).

    Blocking (tens of ms on a large heap): call it off the event loop, after a stream is closed."""
    before = rss_mb()
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    release = Release(round(before, 1), round(rss_mb(), 1), trim is not None)
    log.info("memory: RSS %.0f -> %.0f MiB after releasing freed memory%s", release.rss_before_mb,
             release.rss_after_mb, "" if release.trimmed else " (no malloc_trim in this C library)")
    return release
