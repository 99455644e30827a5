"""``unseen serve`` and ``unseen config default`` (added to the main CLI by ``add_commands``).

``unseen serve`` stops on SIGTERM (or SIGINT) by draining, within :data:`DRAIN_S` seconds of the
signal: it stops listening, then each stream stops its intake, finishes the step in progress,
flushes its delay line into its sinks and closes its recording as a playable file (see
:func:`drain_streams`); a stream whose step outlasts the deadline is abandoned and its recording
is closed with what it has.  The exit code is 0 after a drain.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger("unseen.serve")

DRAIN_S = 10.0  # from the signal to the process's exit
HTTP_CLOSE_S = 1.0  # of it, kept for closing connections once the streams are drained
SINK_CLOSE_S = 1.0  # of it, kept for closing the recordings of a stream whose step was abandoned
EXIT_MARGIN_S = 0.3  # the watchdog ends the process this long before DRAIN_S, whatever still runs


@dataclass
class StreamDrain:
    """How one stream's drain ended."""

    name: str
    drained: bool  # False: its step outlasted the deadline and was abandoned (nothing flushed)
    frames_flushed: int  # frames the flush of the delay line delivered to the sinks
    frames_discarded: int  # frames received but not processed (queued when intake stopped)
    recordings: dict[str, int] = field(default_factory=dict)  # recording path -> frames it holds
    seconds: float = 0.0

    def line(self) -> str:
        how = "drained" if self.drained else "abandoned its step in progress (outlasted the deadline)"
        recs = "".join(f"; recording {p} closed with {n} frames" for p, n in self.recordings.items())
        return (f"stream {self.name} {how} in {self.seconds:.2f} s: {self.frames_flushed} frames flushed, "
                f"{self.frames_discarded} received frames not processed{recs}")


def _on_daemon_thread(fn: Callable[[], Any], name: str) -> asyncio.Future:
    """Run ``fn`` on a daemon thread; an abandoned call never holds the process's exit (the default
    executor's threads would: the interpreter joins them)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _recordings(stream) -> dict[str, int]:
    from unseen.engine.media import FileSink

    return {str(s.sink.path): s.sink.frames for s in stream.sinks if isinstance(s.sink, FileSink)}


def _finish_sinks(stream) -> None:
    """Wait (briefly) for the sinks of an abandoned stream to finish their files."""
    for sink in list(stream.sinks):
        sink.close(timeout=SINK_CLOSE_S)


async def drain_streams(streams: Iterable, timeout: float) -> list[StreamDrain]:
    """Close every stream at once, each on its own daemon thread, with ``LiveStream.close(timeout)``:
    intake stopped, the step in progress finished, the delay line flushed, the sinks closed; a stream
    whose step outlasts ``timeout`` is abandoned, its sinks closed with what they have (given up to
    :data:`SINK_CLOSE_S` more to finish their files)."""
    streams = list(streams)
    if not streams:
        return []
    loop = asyncio.get_running_loop()
    start = loop.time()
    closing = {s.name: _on_daemon_thread(functools.partial(s.close, timeout=timeout), f"unseen-drain-{s.name}")
               for s in streams}
    done_at: dict[str, float] = {}
    for name, fut in closing.items():
        fut.add_done_callback(lambda _f, n=name: done_at.setdefault(n, loop.time() - start))
    await asyncio.wait(closing.values(), timeout=timeout + SINK_CLOSE_S / 2)
    reports = {s.name: _close_report(s, closing[s.name]) for s in streams}
    abandoned = [s for s in streams if reports[s.name] is None or reports[s.name].abandoned]
    if abandoned:
        await asyncio.wait([_on_daemon_thread(lambda s=s: _finish_sinks(s), f"unseen-abandon-{s.name}")
                            for s in abandoned], timeout=SINK_CLOSE_S)
    drains = []
    for s in streams:
        r = reports[s.name]
        drains.append(StreamDrain(s.name, s not in abandoned, r.flushed if r else 0, r.discarded if r else 0,
                                  _recordings(s), done_at.get(s.name, loop.time() - start)))
    return drains


def _close_report(stream, closing: asyncio.Future):
    """The stream's ``CloseReport``; None while its close still runs (or when it failed)."""
    if not closing.done():
        return None
    if closing.exception() is not None:
        log.error("stream %s: closing failed (%s); its recording may be incomplete", stream.name,
                  closing.exception())
        return None
    return closing.result()


class Serve:
    """One ``unseen serve`` process: the app on its port until SIGTERM/SIGINT, then the drain."""

    def __init__(self, settings, drain_s: float = DRAIN_S) -> None:
        self.settings = settings
        self.drain_s = drain_s
        self._stop = asyncio.Event()

    async def run(self) -> int:
        from aiohttp import web
        from aiohttp.log import access_logger

        from .app import SERVER, create_app

        app = create_app(self.settings)
        runner = web.AppRunner(app, access_log=access_logger, shutdown_timeout=HTTP_CLOSE_S / 2)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a signal while streams start drains them too
            loop.add_signal_handler(sig, self._signalled, sig)
        await runner.setup()  # starts the configured streams
        try:
            if not self._stop.is_set():
                site = web.TCPSite(runner, self.settings.host, self.settings.port)
                await site.start()
                names = ", ".join(app[SERVER].streams) or "none"
                print(f"unseen serve: http://{self.settings.host}:{self.settings.port}/ (streams: {names})",
                      flush=True)
            await self._stop.wait()
            await self._drain(runner, app[SERVER])
        finally:
            await runner.cleanup()  # the app's cleanup (Server.close) finds the streams closed
        return 0

    def _signalled(self, sig: int) -> None:
        if self._stop.is_set():
            log.info("%s: the drain is under way; it ends within %g s of the first signal",
                     signal.Signals(sig).name, self.drain_s)
            return
        self._stop.set()
        self._deadline = time.monotonic() + self.drain_s
        _watchdog(self.drain_s - EXIT_MARGIN_S)
        log.info("%s: draining (stop intake, finish the step in progress, flush, close recordings) within %g s",
                 signal.Signals(sig).name, self.drain_s)

    async def _drain(self, runner, server) -> None:
        for site in list(runner.sites):
            await site.stop()  # no new connections
        server.ready = False
        streams = list(server.streams.values())
        budget = self._deadline - time.monotonic() - HTTP_CLOSE_S - 1.5 * SINK_CLOSE_S - EXIT_MARGIN_S
        reports = await drain_streams(streams, max(0.0, budget))
        for r in reports:
            (log.info if r.drained else log.warning)("drain: %s", r.line())
        flushed = sum(r.frames_flushed for r in reports)
        left = sum(not r.drained for r in reports)
        log.info("drain: %d stream(s), %d frames flushed, %d abandoned, %.2f s after the signal; exiting",
                 len(reports), flushed, left, self.drain_s - (self._deadline - time.monotonic()))


def _watchdog(after_s: float) -> None:
    """End the process ``after_s`` seconds from now (exit code 0: the drain had its time) if it has not
    ended by itself: an abandoned step or a thread the interpreter joins must not hold the exit."""

    def bite() -> None:
        time.sleep(after_s)
        log.warning("drain: the process had not exited %.1f s after the signal; ending it now", after_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)

    threading.Thread(target=bite, name="unseen-exit-watchdog", daemon=True).start()


def cmd_serve(args) -> int:
    from .config import load
    from .memory import limit_arenas

    settings = load(args.config, host=args.host, port=args.port, insecure=args.insecure or None)
    if limit_arenas():  # before any stream thread: a live stream's RSS stays flat (see server/memory.py)
        log.debug("malloc arenas capped at 2 (set MALLOC_ARENA_MAX to choose)")
    if args.ice_loopback:
        settings.ice.loopback = True
    return asyncio.run(Serve(settings).run())


def cmd_config_default(args) -> int:
    from .config import DEFAULT_TOML

    print(DEFAULT_TOML, end="")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve live streams: browser client, WebRTC, RTSP, control API")
    serve.add_argument("--config", help="config file (.toml or .json; see 'unseen config default')")
    serve.add_argument("--host", default=None, help="listen address (overrides the config)")
    serve.add_argument("--port", type=int, default=None, help="port (overrides the config)")
    serve.add_argument("--insecure", action="store_true",
                       help="listen beyond loopback without an access token (a trusted network only)")
    serve.add_argument("--ice-loopback", action="store_true",
                       help="offer a 127.0.0.1 ICE candidate (browser on the same host without a LAN address)")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration helpers")
    csub = config.add_subparsers(dest="config_command", required=True)
    default = csub.add_parser("default", help="print the commented default config (TOML)")
    default.set_defaults(func=cmd_config_default)
