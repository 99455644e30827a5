"""The ``unseen`` command line: run, demo, serve, weights, bench, click/objects/clear, config.

argparse (standard library) keeps the CLI dependency-free; tqdm draws the progress bar.
Every failure the user can fix ends in one line ``unseen: error: <cause>; <fix>`` and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

log = logging.getLogger("unseen")

FILE_DELAY = 12  # frames: files have no latency budget, so clicks get a longer look ahead (motion cues)
_CLICK = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*(?:@\s*(\d+))?\s*(?:#\s*(\d+))?\s*$")


@dataclass
class ClickArg:
    x: float
    y: float
    frame: int
    object: int | None
    positive: bool


def parse_click(text: str, positive: bool = True) -> ClickArg:
    """``X,Y[@FRAME][#OBJECT]`` -> ClickArg (frame defaults to 0)."""
    m = _CLICK.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad click {text!r}; write X,Y or X,Y@FRAME or X,Y@FRAME#OBJECT")
    x, y, frame, obj = m.groups()
    return ClickArg(float(x), float(y), int(frame or 0), int(obj) if obj else None, positive)


_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"^" + ",".join([_NUMBER] * 4) + r"(?:@\s*(\d+))?\s*(?:#\s*(\d+))?\s*$")


@dataclass
class BoxArg:
    box: tuple[float, float, float, float]
    frame: int
    object: int | None
    positive: bool = True  # a box always shows the object: it may start one


def parse_box(text: str) -> BoxArg:
    """``X0,Y0,X1,Y1[@FRAME][#OBJECT]`` -> BoxArg (frame defaults to 0)."""
    m = _BOX.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad box {text!r}; write X0,Y0,X1,Y1 or X0,Y0,X1,Y1@FRAME#OBJECT")
    *corners, frame, obj = m.groups()
    x0, y0, x1, y1 = (float(v) for v in corners)
    return BoxArg((x0, y0, x1, y1), int(frame or 0), int(obj) if obj else None)


@dataclass
class PromptPlan:
    """One object's clicks and box on one frame: one Pipeline.prompt, one segmentation."""

    object: int
    frame: int
    clicks: list[ClickArg]
    box: BoxArg | None = None


def plan_prompts(given: list[ClickArg | BoxArg]) -> list[PromptPlan]:
    """The command line's clicks and boxes, grouped by object and frame.  A click or box without #OBJECT
    starts the next object (numbered in command-line order), a negative without it corrects the last one;
    a later box of an object on a frame replaces an earlier one.  Groups that can start an object come first."""
    starters = [g for g in given if g.object is None and g.positive]
    number = {id(g): i + 1 for i, g in enumerate(starters)}
    plans: dict[tuple[int, int], PromptPlan] = {}
    for g in given:
        oid = g.object if g.object is not None else number.get(id(g), max(1, len(starters)))
        plan = plans.setdefault((oid, g.frame), PromptPlan(oid, g.frame, []))
        if isinstance(g, BoxArg):
            plan.box = g
        else:
            plan.clicks.append(g)
    return sorted(plans.values(), key=lambda p: not (p.box or any(c.positive for c in p.clicks)))


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backends")
    g.add_argument("--segmenter", default="auto", help="auto | classical | sam:vit_b|vit_l|vit_h (default auto)")
    g.add_argument("--propagator", default="auto", help="auto | classical | aot:<variant>, e.g. aot:r50_deaotl")
    g.add_argument("--inpainter", default="auto", help="auto | classical | e2fgvi:hq | e2fgvi:e2fgvi")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the neural backends")
    g.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"],
                   help="neural stages: fp16/bf16 autocast (CUDA; on CPU too, slower); tf32: TF32 tensor cores "
                        "for fp32 on CUDA (process-wide; fp32 on CPU)")
    g.add_argument("--compile", default="none", choices=["none", "torch", "tensorrt"],
                   help="torch.compile or torch-tensorrt for the neural backends (tensorrt: untested here)")
    g.add_argument("--weights-dir", type=Path, default=None, help="weights folder (default $UNSEEN_WEIGHTS)")
    g.add_argument("--random-weights", action="store_true",
                   help="neural backends with random weights (speed tests only; output is meaningless)")


def _options(args):
    from unseen.engine.backends.registry import BackendOptions

    opts = BackendOptions(device=args.device, weights_dir=args.weights_dir, precision=args.precision,
                          compile=args.compile)
    if getattr(args, "delay", None) is not None:
        opts.future = min(opts.future, args.delay)
    if args.random_weights:
        opts.extra["random_weights"] = True
    return opts


# ------------------------------------------------------------------------------------ run
def cmd_run(args) -> int:
    from tqdm import tqdm

    from unseen.engine.effects import Effect
    from unseen.engine.masks import MaskFolder, MaskWriter
    from unseen.engine.media import MediaError
    from unseen.engine.pipeline import PipelineConfig, check_inside, clip_box
    from unseen.engine.stages import Click
    from unseen.engine.session import Backends, MaskSink, Mode, RuntimeConfig, Session, build_pipeline

    prompts: list[ClickArg | BoxArg] = list(args.prompts or [])
    if not prompts and args.masks_in is None:
        raise UsageError("nothing to remove: give --click X,Y or --box X0,Y0,X1,Y1 (on the object) or --masks-in DIR")
    source = _open_input(args)
    info = source.info
    try:
        for c in prompts:
            if isinstance(c, BoxArg):
                c.box = clip_box(c.box, info.width, info.height)
            else:
                check_inside(c.x, c.y, info.width, info.height)
            if info.frames is not None and c.frame >= info.frames:
                raise UsageError(f"{'box' if isinstance(c, BoxArg) else 'click'} on frame {c.frame} is beyond the "
                                 f"last frame ({info.frames - 1}); give a frame of the video")
        masks_in = MaskFolder(args.masks_in, (info.width, info.height)) if args.masks_in else None
        if masks_in is not None:
            masks_in.labels(0)  # fails now, not mid-run, when the size does not match
        delay = args.delay if args.delay is not None else FILE_DELAY
        config = PipelineConfig(delay=delay, default_effect=Effect.parse(args.effect))
        pipeline = build_pipeline(Backends(args.segmenter, args.propagator, args.inpainter), _options(args),
                                  config, masks_in=masks_in)
        sink = _open_output(args, source)
        writer = MaskWriter(args.masks_out) if args.masks_out else None
    except BaseException:
        source.close()
        raise
    futures = [pipeline.prompt([Click(c.x, c.y, c.positive) for c in plan.clicks], plan.box.box if plan.box else None,
                               object_id=plan.object, frame_index=plan.frame) for plan in plan_prompts(prompts)]
    mode = Mode.SEQUENTIAL if args.sequential else Mode.PIPELINED
    session = Session(source, pipeline, [sink] + ([MaskSink(writer)] if writer else []),
                      config=RuntimeConfig(mode=mode))
    desc = pipeline.describe()["backends"]
    log.info("backends: segmenter=%s propagator=%s inpainter=%s; output delay %d frames; %s",
             desc["segmenter"], desc["propagator"], desc["inpainter"], pipeline.delay, mode.value)
    with tqdm(total=info.frames, unit="frame", desc="unseen run", disable=args.quiet,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]") as bar:
        result = session.run(prompts=futures, progress=bar.update, strict=args.strict)
    damage = "".join([f"; {result.skipped} undecodable input frames skipped" if result.skipped else "",
                      f"; input truncated: {result.truncated.read} of {result.truncated.declared} frames"
                      if result.truncated else ""])
    print(f"wrote {args.output}: {result.frames_out} frames ({result.frames_in} in{damage}), "
          f"{result.fps:.1f} fps ({result.mode}), stage ms/frame {result.stage_ms}",
          file=sys.stderr if args.output == "-" else sys.stdout)  # stdout carries the video
    if result.frames_out != result.frames_in:  # pragma: no cover - an engine bug, never a user error
        raise MediaError(f"{result.frames_in} frames in but {result.frames_out} out")
    return 0


def _open_input(args):
    """The input: a file, URL or folder (PyAV), or ``-``: y4m (or ``--raw-in`` frames) on stdin."""
    from unseen.engine.media import Source
    from unseen.engine.pipes import PIPE, open_pipe_source

    if PIPE not in (args.input, args.output) and Path(args.output).resolve() == Path(args.input).resolve():
        raise UsageError("the output would overwrite the input; choose another output path")
    if args.raw_in is not None and args.input != PIPE:
        raise UsageError("--raw-in describes frames on stdin; give - as the input")
    if args.raw_out is not None and args.output != PIPE:
        raise UsageError("--raw-out writes frames to stdout; give - as the output")
    if args.input == PIPE:
        return open_pipe_source(sys.stdin.buffer, raw=args.raw_in, rate=args.rate)
    if args.rate is not None:
        raise UsageError("--rate sets the rate of frames on stdin; give - as the input, or drop --rate")
    return Source(args.input, open_timeout=args.timeout, read_timeout=args.timeout)


def _open_output(args, source):
    """The sink: a file (H.264, audio copied), or ``-``: y4m (or ``--raw-out`` frames) on stdout."""
    from unseen.engine.media import FileSink
    from unseen.engine.pipes import PIPE, PipeSink, claim_stdout

    if args.output == PIPE:  # stdout carries the video alone: prints and logs go to stderr
        return PipeSink(claim_stdout(), source.info, raw=args.raw_out)
    return FileSink(args.output, source.info, audio_template=source.audio_stream)


def _raw_format(text: str):
    from unseen.engine.pipes import RawFormat

    try:
        return RawFormat.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> Fraction:
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}; give frames per second, e.g. 25 or 30000/1001")
    return rate


# ----------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    import numpy as np

    from unseen.engine import demo

    report = demo.run_demo(Path(args.out), frames=args.frames, width=args.width, height=args.height,
                           quiet=args.quiet)
    print(f"before: {report['before']}\nafter:  {report['after']}")
    print(f"backends: {report['backends']}")
    print(f"PSNR inside the object's region (dilated), output vs ground-truth background: "
          f"{report['psnr_region']:.2f} dB (mean over {report['frames']} frames; "
          f"{report['psnr_region_encoded']:.2f} dB after H.264 encoding); whole frame {report['psnr_frame']:.2f} dB")
    print(f"mask IoU vs ground truth: mean {report['iou_mean']:.3f}, min {report['iou_min']:.3f}; "
          f"{report['fps']:.1f} fps")
    return 0 if np.isfinite(report["psnr_region"]) else 1


class UsageError(ValueError):
    """A bad argument the user can fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unseen", description="Click an object in a video; it disappears.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="remove (or mask) clicked objects from a video file or URL")
    run.add_argument("input", help="video file, URL (rtsp://, http://), folder of numbered frames, or - (y4m on stdin)")
    run.add_argument("output", help="output video (.mp4, .mkv), or - (y4m on stdout)")
    run.add_argument("--click", action="append", dest="prompts", type=parse_click, metavar="X,Y[@FRAME][#OBJ]",
                     help="positive click; a click without #OBJ starts a new object (repeatable)")
    run.add_argument("--negative", action="append", dest="prompts", type=lambda s: parse_click(s, positive=False),
                     metavar="X,Y[@FRAME][#OBJ]", help="negative click (default: on the last object)")
    run.add_argument("--box", action="append", dest="prompts", type=parse_box, metavar="X0,Y0,X1,Y1[@FRAME][#OBJ]",
                     help="a box around an object: without #OBJ it starts a new object, with #OBJ it refines that "
                          "one and combines with its clicks on the same frame (repeatable; clipped to the frame)")
    run.add_argument("--masks-in", type=Path, help="per-frame masks (binary or palette PNG) instead of clicks")
    run.add_argument("--masks-out", type=Path, help="write per-frame palette PNG masks here")
    run.add_argument("--effect", default="remove", help="remove | blur | pixelate | fill | overlay")
    run.add_argument("--delay", type=int, default=None,
                     help=f"frames held before output (default {FILE_DELAY}; the live default is the inpainter's)")
    run.add_argument("--timeout", type=float, default=10.0, help="open/read timeout for URLs, seconds")
    run.add_argument("--raw-in", type=_raw_format, metavar="WxH[:FORMAT]",
                     help="stdin (input -) carries raw frames of this size and pixel format (rgb24 default, bgr24, "
                          "gray, yuv420p), not y4m")
    run.add_argument("--raw-out", nargs="?", const="rgb24", choices=["rgb24", "bgr24", "gray", "yuv420p"],
                     help="stdout (output -) gets raw frames of the input's size (default rgb24), not y4m")
    run.add_argument("--rate", type=_rate, metavar="FPS",
                     help="frame rate of the frames on stdin (raw: default 25; y4m: overrides its header)")
    run.add_argument("--strict", action="store_true",
                     help="fail (exit 2, no output) when the input is truncated or has undecodable frames; "
                          "without it they are skipped, counted and reported")
    run.add_argument("--sequential", action="store_true",
                     help="decode, track, inpaint and encode one after another on one thread (default: pipelined, "
                          "each stage on its own worker; the same output)")
    _add_backend_args(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="make a synthetic clip, remove its object, print the PSNR")
    demo.add_argument("--out", default="unseen-demo", help="folder for before/after videos")
    demo.add_argument("--frames", type=int, default=90)
    demo.add_argument("--width", type=int, default=480)
    demo.add_argument("--height", type=int, default=288)
    demo.set_defaults(func=cmd_demo)

    from unseen.weights.cli import add_commands as add_weights

    add_weights(sub)
    for module in ("unseen.server.commands", "unseen.client.commands", "unseen.benchmarks.commands"):
        try:
            mod = __import__(module, fromlist=["add_commands"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("unseen: interrupted; nothing was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into one line
        if args.verbose or not _is_user_error(exc):
            log.exception("failed")
        print(f"unseen: error: {exc}", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    from unseen.client.control import ControlError
    from unseen.engine.backends.registry import BackendError
    from unseen.engine.media import MediaError
    from unseen.engine.pipeline import PromptError
    from unseen.engine.stages import SelectionError
    from unseen.weights.registry import WeightsError

    user = (UsageError, MediaError, PromptError, SelectionError, BackendError, WeightsError, OSError, ControlError)
    return isinstance(exc, user)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
