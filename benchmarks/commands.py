"""``unseen bench`` / ``python -m unseen.benchmarks``: run the suites, print, write JSON and PNG."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

SUITES = ("track", "segment", "remove", "complete", "speed")
EXTRA = ("reliability", "live")  # run only when named: a 30-minute soak; a 2-minute live RTSP run


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; write WIDTHxHEIGHT, e.g. 854x480") from None


def configure(p: argparse.ArgumentParser) -> None:
    from .common import DEFAULT_DATA

    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help=f"suites to run, in order: {', '.join(SUITES + EXTRA)} (default: {', '.join(SUITES)}; "
                        f"speed last)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="data folder: one sub-folder per clip with frames/ or one video, optional masks/ "
                        f"(default {DEFAULT_DATA})")
    p.add_argument("--results", type=Path, default=Path("results"), help="folder for the JSON and PNG files")
    p.add_argument("--quick", action="store_true", help="fewer frames: each suite in under 2 minutes")
    p.add_argument("--segmenter", default="classical", help="segmenter backend (default classical)")
    p.add_argument("--propagator", default="classical", help="propagator backend (default classical)")
    p.add_argument("--inpainter", default="classical", help="inpainter backend (default classical)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the neural backends")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"],
                   help="neural backends: fp16/bf16 autocast, tf32 on CUDA (default fp32)")
    p.add_argument("--weights-dir", type=Path, default=None, help="weights folder (default $UNSEEN_WEIGHTS)")
    p.add_argument("--frames", type=int, default=None, help="cap frames per clip (overrides the suite's default)")
    p.add_argument("--no-neural", dest="neural", action="store_false",
                   help="speed: skip the neural backends (random weights)")
    p.add_argument("--no-classical", dest="classical", action="store_false",
                   help="speed: skip the classical runs at each resolution (the long run is --long-frames)")
    p.add_argument("--long-frames", type=int, default=None,
                   help="speed: frames of the long memory run (default 3000, --quick 200; 0 skips it)")
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: print the README table from the JSON files in --results")
    p.add_argument("--soak-minutes", type=float, default=30.0,
                   help="reliability: minutes of the soak (default 30; --quick 20 s; 0 skips it)")
    p.add_argument("--soak-source", default="synthetic",
                   help="reliability: the soak's source, 'synthetic' (432x240, 15 fps) or a video file, looped")
    p.add_argument("--live-seconds", type=float, default=None,
                   help="live: seconds of the live RTSP run after the click (default 120; --quick 20)")
    p.add_argument("--resolutions", type=lambda s: [_size(x) for x in s.split(",") if x], default=None,
                   help="speed: comma-separated sizes (default 432x240,854x480,1280x720)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="speed: OpenCV and torch threads in every mode (default: the runtime's, OpenCV on one thread)")
    p.add_argument("--trace", type=Path, default=None, metavar="FILE",
                   help="speed: write a Chrome trace (chrome://tracing, Perfetto) of every run's stage workers")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: track, segment, remove, complete, speed, reliability, live "
                                            "(JSON, PNG, table)")
    configure(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from unseen.engine.session import Backends

    from . import complete, live, reliability, remove, segment, speed, summary, track
    from .common import Context

    if args.summary_only:
        print(summary.markdown(Path(args.results)), end="")
        return 0
    suites = list(args.suites) or list(SUITES)
    unknown = [s for s in suites if s not in SUITES + EXTRA]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES + EXTRA)}")
    if any(s in SUITES for s in suites) and not Path(args.data).is_dir():
        raise FileNotFoundError(f"data folder {str(args.data)!r} does not exist; give --data DIR")
    ctx = Context(data=Path(args.data), results=Path(args.results), quick=args.quick,
                  backends=Backends(args.segmenter, args.propagator, args.inpainter), device=args.device,
                  precision=args.precision,
                  weights_dir=args.weights_dir, frames=args.frames, neural=args.neural, classical=args.classical,
                  long_frames=args.long_frames, resolutions=args.resolutions, trace=args.trace,
                  threads=args.threads,
                  quiet=getattr(args, "quiet", False))
    modules = {"track": track, "segment": segment, "remove": remove, "complete": complete, "speed": speed}
    for name in suites:
        if name == "reliability":
            reliability.run(ctx, reliability.Options(soak_minutes=args.soak_minutes, soak_source=args.soak_source))
        elif name == "live":
            live.run(ctx, seconds=args.live_seconds)
        else:
            modules[name].run(ctx)
    if not any(s in SUITES for s in suites):
        return 0  # the summary table holds the data suites
    path = summary.write(ctx.results)
    ctx.say(f"\n{summary.markdown(ctx.results)}(written to {path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unseen.benchmarks", description="Unseen benchmarks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, warnings only")
    configure(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return cmd_bench(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"unseen bench: error: {exc}", file=sys.stderr)
        return 2
