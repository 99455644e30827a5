"""Machine info, the JSON and PNG of each suite, and the tables printed to stdout."""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:  # pragma: no cover - psutil is in the bench/test extras
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a missing or broken package is reported as None
        return None
    return str(getattr(mod, "__version__", "unknown"))


def machine_info() -> dict:
    info: dict = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:  # pragma: no cover
        pass
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        pass
    info["versions"] = {name: _version(mod) for name, mod in (
        ("numpy", "numpy"), ("opencv", "cv2"), ("pyav", "av"), ("torch", "torch"), ("torchvision", "torchvision"),
        ("matplotlib", "matplotlib"))}
    info["gpu"] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                           "cuda": torch.version.cuda}
    except Exception:  # noqa: BLE001
        pass
    return info


def machine_line(info: dict) -> str:
    gpu = info.get("gpu")
    parts = [info.get("cpu", "?"), f"{info.get('usable_cores', info.get('logical_cores'))} cores"]
    if info.get("memory_gib"):
        parts.append(f"{info['memory_gib']:g} GiB")
    parts.append(gpu["name"] if gpu else "no GPU")
    return ", ".join(str(p) for p in parts)


def code_state() -> dict:
    """The git commit of the code measured, and the files that differ from it (numbers depend on them)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        changed = [line[3:] for line in run("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": []}
    return {"commit": commit or None, "modified": [c for c in changed if c.startswith(("engine/", "benchmarks/"))]}


def _clean(value):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, Path):
        return str(value)
    return value


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence], *, markdown: bool = True) -> str:
    """A markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def bar_chart(path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
              *, extra=None) -> Path | None:
    """A grouped bar chart (one group per label, one bar per series); ``extra(ax)`` may add to it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the bench/test extras
        return None
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.2))
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        vals = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
        bars = ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    if extra is not None:
        extra(ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
