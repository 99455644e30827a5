"""``unseen weights``: list, fetch, verify, import and check checkpoints.

The main CLI calls :func:`add_commands` on its subparsers; the parsed namespace's
``func(args)`` then runs the command and returns the exit code (0 ok, 1 failure).
``python -m unseen.weights`` runs the same commands through :func:`main`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import checkpoint, store
from .registry import REGISTRY, WeightsError, get


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _list(args: argparse.Namespace) -> int:
    folder = store.weights_dir(args.weights_dir)
    rows = [("NAME", "FAMILY", "FILE", "SIZE", "STATUS", "LICENCE")]
    for entry in REGISTRY.values():
        present = store.find(entry.name, folder)
        status = "present" if present else "missing"
        rows.append((entry.name, entry.family, entry.filename, _size(entry.size), status, entry.licence))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"weights folder: {folder}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    path = store.fetch(args.name, args.weights_dir, progress=not args.quiet, url=args.url, timeout=args.timeout)
    print(f"OK {get(args.name).name}: {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    if args.name:
        names = [get(args.name).name]
    else:
        names = [n for n in REGISTRY if store.find(n, args.weights_dir)]
        if not names:
            print(f"no weights in {store.weights_dir(args.weights_dir)}; run `unseen weights fetch NAME`")
            return 1
    failed = 0
    for name in names:
        result = store.verify(name, args.weights_dir)
        print(result.verdict)
        failed += not result.ok
    return 1 if failed else 0


def _import(args: argparse.Namespace) -> int:
    path = store.import_file(args.name, args.file, args.weights_dir)
    print(f"OK {get(args.name).name}: imported {args.file} as {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    report = checkpoint.check(Path(args.file), args.model)
    print(report.verdict)
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``weights`` subcommand; every :class:`WeightsError` becomes one line on stderr."""
    if getattr(args, "weights_command", None) is None:
        args.weights_parser.print_help()
        return 1
    try:
        return args.weights_command(args)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _add_dir_flag(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--weights-dir", type=Path, default=default, metavar="DIR",
                        help="weights folder (default: $UNSEEN_WEIGHTS, else ~/.cache/unseen/weights)")


def _fill(parser: argparse.ArgumentParser) -> None:
    _add_dir_flag(parser, None)
    parser.set_defaults(func=run, weights_parser=parser, weights_command=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_dir_flag(p, argparse.SUPPRESS)  # also accepted after the command
        p.set_defaults(weights_command=handler)
        return p

    command("list", _list, "list every supported checkpoint and whether it is installed")
    p = command("fetch", _fetch, "download a checkpoint (resumable) into the weights folder")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--url", help="download from this mirror instead of the official URL")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = command("verify", _verify, "verify installed checkpoints (sha256 when known, else a strict load)")
    p.add_argument("name", metavar="NAME", nargs="?", help="one checkpoint (default: every installed one)")
    p = command("import", _import, "copy a downloaded checkpoint into the weights folder after a strict check "
                "(a multi-file entry such as nanotrack_v2: the folder holding its files, checked by sha256)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE|DIR", type=Path)
    p = command("check", _check, "check that FILE loads strictly into the model of a checkpoint name")
    p.add_argument("file", metavar="FILE", type=Path)
    p.add_argument("--model", required=True, metavar="NAME", help="checkpoint name, e.g. r50_deaotl")


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``weights`` command to the main CLI's subparsers; returns its parser."""
    parser = subparsers.add_parser("weights", help="manage model checkpoints",
                                   description="Manage the model checkpoints (weights) Unseen uses.")
    _fill(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unseen.weights``: parse ``argv`` and run the command."""
    parser = argparse.ArgumentParser(prog="unseen weights",
                                     description="Manage the model checkpoints (weights) Unseen uses.")
    _fill(parser)
    args = parser.parse_args(argv)
    return run(args)
