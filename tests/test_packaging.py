"""The distribution: one `unseen` namespace in site-packages, every package listed, console script."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"engine": "unseen.engine", "server": "unseen.server", "client": "unseen.client",
           "weights": "unseen.weights", "benchmarks": "unseen.benchmarks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    (path,) = out.glob("unseen-*.whl")
    return zipfile.ZipFile(path)


def test_only_the_unseen_namespace_at_the_top(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"unseen"}


def test_every_python_package_of_the_tree_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT / folder)
            assert f"{package.replace('.', '/')}/{rel.as_posix()}" in names, rel
        for module in (ROOT / folder).rglob("*.py"):
            rel = module.relative_to(ROOT / folder).as_posix()
            assert f"{package.replace('.', '/')}/{rel}" in names, f"{folder}/{rel} is not packaged"
    assert any(n.startswith("unseen/client/static/") for n in names)


def test_console_script_points_at_the_cli(wheel):
    (entry,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "unseen = unseen.server.cli:main" in wheel.read(entry).decode()
