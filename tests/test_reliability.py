"""The reliability suite's --quick form (churn and a 20 s soak against a real ``unseen serve``), and the
memory release a removed stream's threads leave to do."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from unseen.benchmarks import commands
from unseen.server.memory import release_memory

pytestmark = pytest.mark.timeout(240)


def test_reliability_quick(tmp_path):
    rc = commands.main(["-q", "reliability", "--quick", "--results", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "reliability.json").read_text())
    assert r["suite"] == "reliability" and r["quick"] is True
    assert r["machine"]["logical_cores"] >= 1 and len(r["loadavg_start"]) == 3 and r["elapsed_s"] > 0

    c = r["churn"]
    assert (c["ws_cycles"], c["stream_cycles"], c["clicks"]) == (20, 4, 1)
    assert c["failures"] == [] and c["streams_left"] == 0
    for point in ("start", "after_churn", "after_all_removed"):
        assert c[point]["rss_mb"] > 0 and c[point]["fds"] > 0 and c[point]["threads"] >= 1
    assert c["fds_delta"] <= 0, c  # every socket and file of the churn closed
    assert c["shutdown"] == {"exit_code": 0, "exit_s": c["shutdown"]["exit_s"]}
    assert c["log_errors"]["errors"] + c["log_errors"]["tracebacks"] == 0, c["log_errors"]

    s = r["soak"]
    assert s["seconds"] == 20 and s["source"] == "synthetic://cam" and s["objects"] == 1
    assert s["delay_constant"] and s["delay_frames"] >= 1 and s["delay_seconds"] > 0
    assert s["frames_out"] > 30 and s["frames_in"] >= s["frames_out"] and s["dropped"] >= 0
    assert s["viewers"]["sessions"] >= 1 and s["viewers"]["frames"] > 0  # (a session may time out on a loaded machine)
    assert 0 < s["rss_start_mb"] <= s["rss_max_mb"] and s["rss_growth_mb"] == pytest.approx(
        s["rss_end_mb"] - s["rss_warm_mb"], abs=0.11)
    assert s["shutdown"]["exit_code"] == 0
    assert s["log_errors"]["errors"] + s["log_errors"]["tracebacks"] == 0, s["log_errors"]


def test_release_memory_trims_what_threads_freed():
    def churn():  # numpy buffers allocated and freed on another thread (another malloc arena), as a stream's
        for _ in range(20):
            frames = [np.ones((240, 432, 3), np.uint8) for _ in range(8)]
            del frames

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    release = release_memory()
    assert release.trimmed  # glibc (this project's Linux images)
    assert release.rss_after_mb <= release.rss_before_mb + 1.0
    assert release.freed_mb == pytest.approx(release.rss_before_mb - release.rss_after_mb)
