"""`unseen run` end to end: frames and timestamps in == out, audio kept, masks in/out, bad input."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from unseen.engine.masks import MaskWriter, read_label_map
from unseen.engine.media import Source, probe
from unseen.server.cli import main

from conftest import write_av


def run(*argv) -> int:
    return main(["-q", "run", *map(str, argv), "--segmenter", "classical", "--propagator", "classical",
                 "--inpainter", "classical"])


def _packets(path, kind):
    with av.open(str(path)) as c:
        s = c.streams.audio[0] if kind == "audio" else c.streams.video[0]
        return [(p.pts, p.duration) for p in c.demux(s) if p.size]


def test_run_keeps_frames_timestamps_and_audio(tmp_path, clip, clip_video):
    out = tmp_path / "out.mp4"
    x, y = clip.click(0)
    assert run(clip_video, out, "--click", f"{x},{y}") == 0
    src, dst = probe(clip_video), probe(out)
    assert dst["frames"] == src["frames"] == 60
    assert (dst["first_pts"] * dst["time_base"], dst["last_pts"] * dst["time_base"]) == \
           (src["first_pts"] * src["time_base"], src["last_pts"] * src["time_base"])
    assert dst["audio"]
    assert _packets(out, "audio") == _packets(clip_video, "audio")
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    m = clip.masks[30]
    inside = np.abs(frames[30].astype(int) - clip.frames[30].astype(int))[m].mean()
    outside = np.abs(frames[30].astype(int) - clip.frames[30].astype(int))[~cv2.dilate(
        m.astype(np.uint8), np.ones((15, 15))).astype(bool)].mean()
    # the object changed; the rest only by H.264 re-encoding (CRF 18 on this texture: about 3 levels)
    assert inside > 30 and outside < 5
    assert not list(tmp_path.glob(".*partial*"))


def test_frame_folder_input_masks_out_and_back_in(tmp_path, clip):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, img in enumerate(clip.frames[:20]):
        cv2.imwrite(str(frames / f"{i:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    x, y = clip.click(0)
    assert run(frames, tmp_path / "a.mp4", "--click", f"{x},{y}", "--masks-out", tmp_path / "masks") == 0
    files = sorted((tmp_path / "masks").glob("*.png"))
    assert len(files) == 20 and read_label_map(files[5]).max() == 1
    assert probe(tmp_path / "a.mp4")["frames"] == 20
    # the exported masks drive a second run, with another effect
    assert run(frames, tmp_path / "b.mp4", "--masks-in", tmp_path / "masks", "--effect", "blur") == 0
    assert probe(tmp_path / "b.mp4")["frames"] == 20


def test_two_objects_and_a_negative_click(tmp_path, clip):
    x, y = clip.click(0)
    out = tmp_path / "o.mp4"
    assert run(clip_video_path(tmp_path, clip), out, "--click", f"{x},{y}", "--click", "290,20@3",
               "--negative", f"{x + 14},{y}@0#1", "--masks-out", tmp_path / "m", "--effect", "overlay") == 0
    labels = read_label_map(tmp_path / "m" / "00010.png")
    assert set(np.unique(labels)) == {0, 1, 2}


def clip_video_path(tmp_path: Path, clip) -> Path:
    return write_av(tmp_path / "short.mp4", clip.frames[:15])


def _bad(tmp_path, clip):
    short = clip_video_path(tmp_path, clip)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(random.Random(0).randbytes(4096))  # (seeded: the same garbage every run)
    flat = write_av(tmp_path / "flat.mp4", [np.full((96, 128, 3), 100, np.uint8)] * 6)
    wrong_masks = tmp_path / "wrong"
    MaskWriter(wrong_masks).write(0, {1: np.ones((10, 10), bool)}, (10, 10))
    x, y = clip.click(0)
    return {
        "missing input": ([tmp_path / "nope.mp4", tmp_path / "o.mp4", "--click", "1,1"], "does not exist"),
        "unreadable input": ([garbage, tmp_path / "o.mp4", "--click", "1,1"], "cannot open input"),
        "dead URL": (["rtsp://127.0.0.1:9/none", tmp_path / "o.mp4", "--click", "1,1", "--timeout", "2"],
                     r"rtsp://127\.0\.0\.1:9/none"),
        "click outside": ([short, tmp_path / "o.mp4", "--click", "900,10"], "outside the 320x192 frame"),
        "click beyond last frame": ([short, tmp_path / "o.mp4", "--click", f"{x},{y}@40"], "beyond the last frame"),
        "click selects nothing": ([flat, tmp_path / "o.mp4", "--click", "60,40"], "selected nothing"),
        # /proc takes no new files, for root either
        "unwritable output": ([short, "/proc/o.mp4", "--click", f"{x},{y}"], r"(not writable|cannot write) '/proc/o.mp4'"),
        "missing output folder": ([short, tmp_path / "no" / "o.mp4", "--click", f"{x},{y}"], "does not exist"),
        "mask size mismatch": ([short, tmp_path / "o.mp4", "--masks-in", wrong_masks], "give masks of the video.s size"),
        "nothing to do": ([short, tmp_path / "o.mp4"], "nothing to remove"),
        "unknown backend": ([short, tmp_path / "o.mp4", "--click", f"{x},{y}", "--inpainter", "magic"],
                            "unknown inpainter backend"),
    }


CASES = ["missing input", "unreadable input", "dead URL", "click outside", "click beyond last frame",
         "click selects nothing", "unwritable output", "missing output folder", "mask size mismatch",
         "nothing to do", "unknown backend"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_and_no_output(tmp_path, clip, capsys, case):
    argv, expected = _bad(tmp_path, clip)[case]
    started = time.monotonic()
    code = main(["-q", "run", *map(str, argv), *(["--segmenter", "classical", "--propagator", "classical",
                                                  "--inpainter", "classical"] if "--inpainter" not in argv else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("unseen: error: ") and re.search(expected, err[0]), err
    assert time.monotonic() - started < 30  # a dead URL times out, it does not hang
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".o.partial*"))


def test_bad_click_syntax_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "a.mp4", "b.mp4", "--click", "12;40"])
    assert exc.value.code == 2
    assert "write X,Y or X,Y@FRAME" in capsys.readouterr().err


def test_source_loop_keeps_timestamps_increasing(tmp_path, clip):
    video = clip_video_path(tmp_path, clip)
    with Source(video, loop=True) as src:
        frames = [f for _, f in zip(range(40), src)]
    assert [f.index for f in frames] == list(range(40))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))


def test_sequential_and_pipelined_runs_write_the_same_video_and_masks(tmp_path, clip):
    video = clip_video_path(tmp_path, clip)
    x, y = clip.click(0)
    outputs = {}
    for mode in ("pipelined", "sequential"):
        out, masks = tmp_path / f"{mode}.mp4", tmp_path / f"masks-{mode}"
        flags = ["--sequential"] if mode == "sequential" else []
        assert run(video, out, "--click", f"{x},{y}", "--delay", "5", "--masks-out", masks, *flags) == 0
        with av.open(str(out)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        outputs[mode] = (frames, [read_label_map(p) for p in sorted(masks.glob("*.png"))])
    (frames_p, masks_p), (frames_s, masks_s) = outputs["pipelined"], outputs["sequential"]
    assert len(frames_p) == len(frames_s) == len(masks_p) == len(masks_s) == 15
    assert all(np.array_equal(a, b) for a, b in zip(frames_p, frames_s))
    assert all(np.array_equal(a, b) for a, b in zip(masks_p, masks_s))


def test_the_classical_path_never_imports_torch(tmp_path, clip, clip_video):
    """`unseen run` with the embedded default (no weights installed) starts without torch (2 s of import)."""
    out = tmp_path / "out.mp4"
    x, y = clip.click(0)
    code = ("import sys; from unseen.server.cli import main; "
            f"rc = main(['-q', 'run', {str(clip_video)!r}, {str(out)!r}, '--click', '{x},{y}']); "
            "print(rc, 'torch' in sys.modules)")
    env = dict(os.environ, UNSEEN_WEIGHTS=str(tmp_path / "no-weights"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.split()[-2:] == ["0", "False"], (done.stdout[-500:], done.stderr[-2000:])
    assert probe(out)["frames"] == len(clip.frames)
