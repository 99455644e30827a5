"""unseen.weights: registry, strict checks of every container and damage, the weights folder,
resumable downloads from a local HTTP server, and the ``unseen weights`` commands.

Most tests use a tiny stand-in model (monkeypatched ``build_model``) so they run in seconds;
a few build the real AOT/E2FGVI models from the official key lists.
"""
from __future__ import annotations

import argparse
import dataclasses
import http.server
import importlib.util
import io
import random
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import unseen.engine.models as models
from support.nanotrack import nanotrack_folder
from unseen.weights import cli, loading, registry, store
from unseen.weights.registry import (REGISTRY, CheckpointError, ChecksumError, DownloadError, MissingWeightsError,
                                     UnknownWeightsError)

torch.set_num_threads(2)
REFERENCE_KEYS = Path(__file__).parent / "reference_keys"


# -- stand-in model ------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """A few parameters and buffers; AOT (non-DeAOT) names also get ``LSTT.mask_token``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        if name in models.MODEL_NAMES_AOT and "deaot" not in name:
            self.LSTT = nn.Module()
            self.LSTT.mask_token = nn.Parameter(torch.zeros(1, 1, 4))


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, torch.Tensor]]:
    """Make every model (AOT, E2FGVI, SAM) a :class:`TinyNet`; returns a state-dict factory."""
    monkeypatch.setattr(models, "build_model", lambda name: TinyNet(name))
    from segment_anything import sam_model_registry

    for kind in ("vit_h", "vit_l", "vit_b"):
        monkeypatch.setitem(sam_model_registry, kind, lambda checkpoint=None: TinyNet("sam"))

    def state(name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(len(name))
        return {k: v.clone() for k, v in TinyNet(name).state_dict().items()}

    return state


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights folder, selected through ``$UNSEEN_WEIGHTS``."""
    path = tmp_path / "weights"
    monkeypatch.setenv(store.ENV_VAR, str(path))
    return path


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def assert_one_line_fix(message: str, name: str) -> None:
    assert "\n" not in message
    assert f"`unseen weights fetch {name}`" in message or f"`unseen weights import {name} FILE`" in message


# -- registry ------------------------------------------------------------------------------------


def test_registry_covers_every_model() -> None:
    for name in models.MODEL_NAMES_AOT + models.MODEL_NAMES_E2FGVI:
        entry = REGISTRY[name]
        assert entry.model == name
        assert entry.family == ("aot" if name in models.MODEL_NAMES_AOT else "e2fgvi")
    assert registry.names("sam") == ["sam_vit_h", "sam_vit_l", "sam_vit_b"]
    assert registry.names("nanotrack") == ["nanotrack_v2"]
    assert len(REGISTRY) == 3 + len(models.MODEL_NAMES_AOT) + len(models.MODEL_NAMES_E2FGVI) + 1


TORCH_ENTRIES = [e for e in REGISTRY.values() if not e.multi]


@pytest.mark.parametrize("entry", TORCH_ENTRIES, ids=[e.name for e in TORCH_ENTRIES])
def test_registry_entry_complete(entry: registry.WeightsEntry) -> None:
    assert entry.family in registry.FAMILIES
    assert entry.filename.endswith(".pth") and entry.urls and entry.licence and entry.description
    assert all(u.startswith("https://") for u in entry.urls)
    if entry.family != "sam":
        assert entry.url.startswith("https://drive.google.com/uc?export=download&id=")
    assert entry.sha256 is None or (len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.size = 1  # type: ignore[misc]


@pytest.mark.parametrize("name, filename, licence", [
    ("sam_vit_h", "sam_vit_h_4b8939.pth", "Apache-2.0"),
    ("sam_vit_b", "sam_vit_b_01ec64.pth", "Apache-2.0"),
    ("aott", "AOTT_PRE_YTB_DAV.pth", "BSD-3"),
    ("r50_aotl", "R50_AOTL_PRE_YTB_DAV.pth", "BSD-3"),
    ("r50_deaotl", "R50_DeAOTL_PRE_YTB_DAV.pth", "BSD-3"),
    ("swinb_deaotl", "SwinB_DeAOTL_PRE_YTB_DAV.pth", "BSD-3"),
    ("e2fgvi", "E2FGVI-CVPR22.pth", "CC BY-NC 4.0"),
    ("e2fgvi_hq", "E2FGVI-HQ-CVPR22.pth", "CC BY-NC 4.0"),
])
def test_official_filenames(name: str, filename: str, licence: str) -> None:
    assert registry.get(name.upper()).filename == filename
    assert registry.get(name).licence.startswith(licence)


def test_unknown_name() -> None:
    with pytest.raises(UnknownWeightsError, match="unseen weights list"):
        registry.get("sam_vit_x")


# -- check: containers and damage ----------------------------------------------------------------


def _optimizer(sd: dict[str, torch.Tensor]) -> dict:
    """An AdamW-like optimizer state, as in the released AOT training checkpoints."""
    state = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(v)} for i, v in enumerate(sd.values())}
    return {"state": state,
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": list(range(len(sd)))}]}


def _prefixed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"module." + k: v for k, v in sd.items()}


CONTAINERS = [
    # id, wrap, container, prefix stripped
    ("trainer", lambda sd: {"state_dict": sd, "optimizer": _optimizer(sd), "scaler": {"scale": 1024.0}},
     "state_dict", False),
    ("model", lambda sd: {"model": sd}, "model", False),
    ("bare", lambda sd: sd, "bare", False),
    ("module-prefix", _prefixed, "bare", True),
    ("trainer-module-prefix", lambda sd: {"state_dict": _prefixed(sd), "optimizer": {}}, "state_dict", True),
]


@pytest.mark.parametrize("name", ["aott", "deaotl", "e2fgvi_hq", "sam_vit_b"])
@pytest.mark.parametrize("wrap, container, stripped", [c[1:] for c in CONTAINERS], ids=[c[0] for c in CONTAINERS])
def test_check_accepts_official_containers(stand_in, tmp_path: Path, name: str, wrap, container: str,
                                           stripped: bool) -> None:
    sd = stand_in(name)
    report = loading.check(save(wrap(sd), tmp_path / "w.pth"), name)
    assert report.ok, report.verdict
    assert (report.container, report.prefix_stripped, report.tensors) == (container, stripped, len(sd))
    assert report.verdict.startswith(f"OK {name}: w.pth loads strictly")
    model = loading.load_model(name, tmp_path / "w.pth")
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert not model.training


class Exploit:
    """Unpickling this runs ``open(marker, 'w')``: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _truncated(sd, path: Path) -> Path:
    data = io.BytesIO()
    torch.save({"state_dict": sd}, data)
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return path


def _without(key: str):
    return lambda sd, path: save({k: v for k, v in sd.items() if k != key}, path)


def _zip_of_checkpoint(sd, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "weights inside")
    return path


DAMAGED = [
    # id, make(sd, path) -> path, expected text in the message
    ("truncated", _truncated, "truncated or corrupt"),
    # (seeded: os.urandom started with a pickle's magic byte 0x80 about one run in 256, and was then read as a
    # legacy checkpoint, "truncated or corrupt")
    ("random-bytes", lambda sd, p: (p.write_bytes(random.Random(0).randbytes(4096)), p)[1], "not a torch checkpoint"),
    ("empty-file", lambda sd, p: (p.write_bytes(b""), p)[1], "not a torch checkpoint"),
    ("missing-key", _without("head.bias"), "1 missing key(s) (e.g. head.bias)"),
    ("extra-key", lambda sd, p: save({**sd, "head.extra": torch.zeros(2)}, p), "1 unexpected key(s) (e.g. head.extra)"),
    ("wrong-shape", lambda sd, p: save({**sd, "head.weight": torch.zeros(3, 4)}, p),
     "shape mismatch(es) (e.g. head.weight: file [3, 4] vs model [2, 4])"),
    ("pickled-object", lambda sd, p: save({"state_dict": sd, "hook": Exploit(p.with_suffix(".pwned"))}, p),
     "arbitrary Python objects"),
    ("not-a-dict", lambda sd, p: save(list(sd.values()), p), "holds a list, not a state dict"),
    ("no-tensors", lambda sd, p: save({"epoch": 3, "lr": 0.1}, p), "no state dict found"),
    ("zip-archive", _zip_of_checkpoint, "a zip archive, not a checkpoint"),
    ("missing-file", lambda sd, p: p.with_name("absent.pth"), "does not exist"),
]


@pytest.mark.parametrize("make, expected", [d[1:] for d in DAMAGED], ids=[d[0] for d in DAMAGED])
def test_check_rejects_damaged(stand_in, tmp_path: Path, make, expected: str) -> None:
    path = make(stand_in("deaott"), tmp_path / "w.pth")
    report = loading.check(path, "deaott")
    assert not report.ok
    assert expected in report.message
    assert_one_line_fix(report.message, "deaott")
    assert report.verdict.startswith("FAIL deaott: ")
    assert not (tmp_path / "w.pwned").exists()  # the exploit never ran
    with pytest.raises((CheckpointError, MissingWeightsError)) as err:
        loading.load_model("deaott", path)
    assert expected in str(err.value)


@pytest.mark.parametrize("name, drop, ok", [
    ("aott", "LSTT.mask_token", True),  # the 2021 AOT checkpoints
    ("r50_aotl", "LSTT.mask_token", True),
    ("aott", "head.weight", False),
    ("aott", "norm.running_mean", False),
])
def test_aot2021_tolerance(stand_in, tmp_path: Path, name: str, drop: str, ok: bool) -> None:
    sd = {k: v for k, v in stand_in(name).items() if k != drop}
    report = loading.check(save({"state_dict": sd}, tmp_path / "w.pth"), name)
    assert report.ok is ok, report.verdict
    assert report.tolerated == (["LSTT.mask_token"] if ok else [])
    assert report.missing == ([] if ok else [drop])
    if ok:
        assert "2021 AOT layout" in report.message
        loading.load_model(name, tmp_path / "w.pth")


def test_tolerance_only_for_aot() -> None:
    assert loading.tolerated_missing(registry.get("aotl")) == ("LSTT.mask_token",)
    for name in ("deaott", "r50_deaotl", "e2fgvi", "sam_vit_b"):
        assert loading.tolerated_missing(registry.get(name)) == ()


def test_load_state_dict_unwraps(stand_in, tmp_path: Path) -> None:
    sd = stand_in("aots")
    for wrap in (c[1] for c in CONTAINERS):
        loaded = loading.load_state_dict(save(wrap(sd), tmp_path / "w.pth"), "aots")
        assert loaded.keys() == sd.keys()
        assert loading.load_state_dict(wrap(sd), "aots").keys() == sd.keys()


# -- weights folder ------------------------------------------------------------------------------


def test_weights_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(store.ENV_VAR, raising=False)
    assert store.weights_dir() == tmp_path / "home/.cache/unseen/weights"
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "env"))
    assert store.weights_dir() == tmp_path / "env"
    assert store.weights_dir(tmp_path / "flag") == tmp_path / "flag"


def test_missing_weights_error(stand_in, folder: Path) -> None:
    assert store.find("aott") is None
    with pytest.raises(MissingWeightsError) as err:
        loading.load_model("aott")
    message = str(err.value)
    assert "`unseen weights fetch aott`" in message and "`unseen weights import aott FILE`" in message
    assert str(folder) in message and "\n" not in message
    with pytest.raises(MissingWeightsError, match="unseen weights fetch aott"):
        store.verify("aott")


def test_import_find_verify_round_trip(stand_in, folder: Path, tmp_path: Path) -> None:
    sd = stand_in("r50_deaotl")
    src = save({"state_dict": sd, "optimizer": _optimizer(sd)}, tmp_path / "download.pth")
    path = store.import_file("r50_deaotl", src)
    assert path == folder / "R50_DeAOTL_PRE_YTB_DAV.pth" == store.find("r50_deaotl")
    assert path.read_bytes() == src.read_bytes()
    result = store.verify("r50_deaotl")
    assert result.ok and "loads strictly" in result.verdict
    model = loading.load_model("r50_deaotl")  # found through $UNSEEN_WEIGHTS
    assert torch.equal(model.state_dict()["head.weight"], sd["head.weight"])
    path.write_bytes(path.read_bytes()[:100])  # damage the installed copy
    result = store.verify("r50_deaotl")
    assert not result.ok and "truncated or corrupt" in result.message
    assert sorted(p.name for p in folder.iterdir()) == [path.name]


def test_import_refuses_bad_file(stand_in, folder: Path, tmp_path: Path) -> None:
    sd = stand_in("aott")
    src = save({**sd, "head.weight": torch.zeros(5, 4)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        store.import_file("aott", src)
    assert "bad.pth was not imported" in str(err.value) and "shape mismatch" in str(err.value)
    assert store.find("aott") is None and list(folder.iterdir()) == []
    with pytest.raises(MissingWeightsError, match="unseen weights import aott FILE"):
        store.import_file("aott", tmp_path / "nope.pth")


def test_import_sam_hash(stand_in, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save(stand_in("sam_vit_b"), tmp_path / "sam.pth")
    store.import_file("sam_vit_b", src)
    result = store.verify("sam_vit_b")  # not the official bytes, but it loads strictly
    assert result.ok and "not the official file (sha256 differs)" in result.message
    official = dataclasses.replace(REGISTRY["sam_vit_b"], sha256=store.sha256sum(src), size=src.stat().st_size)
    monkeypatch.setitem(REGISTRY, "sam_vit_b", official)
    assert store.verify("sam_vit_b").message == "sha256 matches the official file"


def test_import_unzips_archive(stand_in, folder: Path, tmp_path: Path) -> None:
    data = io.BytesIO()
    torch.save(stand_in("e2fgvi"), data)
    src = tmp_path / "E2FGVI-CVPR22.zip"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("release_model/E2FGVI-CVPR22.pth", data.getvalue())
    path = store.import_file("e2fgvi", src)
    assert path.read_bytes() == data.getvalue()
    assert store.verify("e2fgvi").ok


# -- fetch against a local HTTP server -----------------------------------------------------------


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, tuple[str, bytes]]  # path -> (content type, body)
    cut_after: int | None = None  # send only this many bytes of a file, then drop the connection
    ranges = True  # honour Range headers
    seen: list[tuple[str, str | None]]  # (path, Range header) of every request


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.server.seen.append((self.path, self.headers.get("Range")))
        if path not in self.server.files:
            self.send_error(404)
            return
        kind, body = self.server.files[path]
        start = 0
        wanted = self.headers.get("Range")
        if wanted and self.server.ranges:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.server.cut_after
        self.wfile.write(body[start:] if cut is None else body[start:cut])
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.files, srv.seen = {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


@pytest.fixture
def payload(stand_in) -> bytes:
    data = io.BytesIO()
    sd = stand_in("aott")
    torch.save({"state_dict": sd, "optimizer": _optimizer(sd)}, data)
    return data.getvalue()


def test_fetch_resumes_with_range(server: Server, folder: Path, payload: bytes) -> None:
    server.files["/aott.pth"] = ("application/octet-stream", payload)
    server.cut_after = cut = len(payload) // 3
    with pytest.raises(DownloadError) as err:
        store.fetch("aott", progress=False, url=url(server, "/aott.pth"), timeout=5)
    assert f"interrupted after {cut} " in str(err.value) and "`unseen weights fetch aott` again" in str(err.value)
    part = folder / ("AOTT_PRE_YTB_DAV.pth" + store.PART_SUFFIX)
    assert part.stat().st_size == cut and store.find("aott") is None
    server.cut_after = None
    path = store.fetch("aott", progress=False, url=url(server, "/aott.pth"), timeout=5)
    assert server.seen[-1] == ("/aott.pth", f"bytes={cut}-")
    assert path.read_bytes() == payload and store.find("aott") == path and not part.exists()
    assert store.fetch("aott", url=url(server, "/gone")) == path  # present: nothing downloaded
    assert len(server.seen) == 2


def test_fetch_tries_registry_urls_in_order(server: Server, folder: Path, payload: bytes,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/mirror"] = ("application/octet-stream", payload)
    urls = (_closed_port(), url(server, "/mirror"))
    monkeypatch.setitem(REGISTRY, "aott", dataclasses.replace(REGISTRY["aott"], urls=urls))
    assert store.fetch("aott", progress=False, timeout=5).read_bytes() == payload


def test_fetch_restarts_when_range_ignored(server: Server, folder: Path, payload: bytes) -> None:
    server.files["/f"] = ("application/octet-stream", payload)
    server.ranges = False
    part = folder / ("AOTT_PRE_YTB_DAV.pth" + store.PART_SUFFIX)
    folder.mkdir()
    part.write_bytes(b"stale bytes from another file")
    path = store.fetch("aott", progress=False, url=url(server, "/f"), timeout=5)
    assert path.read_bytes() == payload


def test_fetch_complete_part_is_not_downloaded_again(server: Server, folder: Path, payload: bytes) -> None:
    server.files["/f"] = ("application/octet-stream", payload)
    folder.mkdir()
    (folder / ("AOTT_PRE_YTB_DAV.pth" + store.PART_SUFFIX)).write_bytes(payload)
    assert store.fetch("aott", progress=False, url=url(server, "/f"), timeout=5).read_bytes() == payload
    assert server.seen == [("/f", f"bytes={len(payload)}-")]  # answered 416


@pytest.mark.parametrize("field, value, expected", [
    ("sha256", "0" * 64, "has sha256"),
    ("size", 12345, "expected 12345"),
])
def test_fetch_refuses_checksum_mismatch(server: Server, folder: Path, payload: bytes,
                                         monkeypatch: pytest.MonkeyPatch, field: str, value, expected: str) -> None:
    server.files["/f"] = ("application/octet-stream", payload)
    monkeypatch.setitem(REGISTRY, "aott", dataclasses.replace(REGISTRY["aott"], **{field: value}))
    with pytest.raises(ChecksumError, match=expected) as err:
        store.fetch("aott", progress=False, url=url(server, "/f"), timeout=5)
    assert "`unseen weights fetch aott` again" in str(err.value)
    assert store.find("aott") is None and list(folder.iterdir()) == []


def test_fetch_with_known_sha(server: Server, folder: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    server.files["/f"] = ("application/octet-stream", payload)
    entry = dataclasses.replace(REGISTRY["aott"], sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    monkeypatch.setitem(REGISTRY, "aott", entry)
    monkeypatch.setattr(loading, "check", None)  # a known sha256 needs no strict load
    assert store.fetch("aott", progress=False, url=url(server, "/f"), timeout=5).read_bytes() == payload


def test_fetch_rejects_file_that_does_not_load(server: Server, folder: Path, stand_in) -> None:
    data = io.BytesIO()
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, data)
    server.files["/f"] = ("application/octet-stream", data.getvalue())
    with pytest.raises(CheckpointError, match="1 unexpected key"):
        store.fetch("aott", progress=False, url=url(server, "/f"), timeout=5)
    assert list(folder.iterdir()) == []


def test_fetch_follows_drive_confirm_page(server: Server, folder: Path, payload: bytes) -> None:
    page = ('<html><form id="download-form" action="/download" method="get">'
            '<input type="hidden" name="id" value="XYZ"><input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="a&amp;b"></form></html>')
    server.files["/uc"] = ("text/html; charset=utf-8", page.encode())
    server.files["/download"] = ("application/octet-stream", payload)
    path = store.fetch("aott", progress=False, url=url(server, "/uc?export=download&id=XYZ"), timeout=5)
    assert path.read_bytes() == payload
    assert server.seen[-1][0] == "/download?id=XYZ&confirm=t&uuid=a%26b"


def test_fetch_web_page_instead_of_file(server: Server, folder: Path) -> None:
    server.files["/uc"] = ("text/html", b"<html>Quota exceeded</html>")
    with pytest.raises(DownloadError, match="sent a web page instead of AOTT_PRE_YTB_DAV.pth") as err:
        store.fetch("aott", progress=False, url=url(server, "/uc"), timeout=5)
    assert_one_line_fix(str(err.value), "aott")


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/f"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/f"
    sock.close()


@pytest.mark.parametrize("kind", ["refused", "silent", "404"])
def test_fetch_dead_url_fails_fast(request, server: Server, folder: Path, kind: str) -> None:
    target = {"refused": _closed_port, "silent": lambda: request.getfixturevalue("silent_url"),
              "404": lambda: url(server, "/missing")}[kind]()
    started = time.monotonic()
    with pytest.raises(DownloadError) as err:
        store.fetch("aott", progress=False, url=target, timeout=1)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith("cannot download aott from 127.0.0.1: ")
    assert message.endswith("download AOTT_PRE_YTB_DAV.pth elsewhere and run `unseen weights import aott FILE`")
    assert {"refused": "refused", "silent": "no answer within 1 s", "404": "HTTP 404"}[kind] in message


# -- command line --------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_commands(stand_in, folder: Path, tmp_path: Path, capsys, silent_url: str) -> None:
    sd = stand_in("deaotb")
    good = save({"state_dict": sd}, tmp_path / "good.pth")
    bad = save({k: v for k, v in sd.items() if k != "head.bias"}, tmp_path / "bad.pth")
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and out.count("missing") == len(REGISTRY) and str(folder) in out
    assert run_cli(capsys, "verify")[0] == 1
    code, out, _ = run_cli(capsys, "check", str(good), "--model", "deaotb")
    assert code == 0 and out.startswith("OK deaotb: good.pth loads strictly")
    code, out, _ = run_cli(capsys, "check", str(bad), "--model", "deaotb")
    assert code == 1 and out.startswith("FAIL deaotb: bad.pth does not fit deaotb: 1 missing key")
    code, _, err = run_cli(capsys, "import", "deaotb", str(bad))
    assert code == 1 and err.startswith("error: bad.pth was not imported") and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "import", "deaotb", str(good))
    assert code == 0 and "DeAOTB_PRE_YTB_DAV.pth" in out
    code, out, _ = run_cli(capsys, "verify")
    assert code == 0 and out.startswith("OK deaotb: ")
    other = tmp_path / "other"
    assert run_cli(capsys, "verify", "deaotb", "--weights-dir", str(other))[0] == 1  # flag after the command
    assert run_cli(capsys, "--weights-dir", str(other), "list")[1].count("missing") == len(REGISTRY)
    code, _, err = run_cli(capsys, "fetch", "aott", "--url", silent_url, "--timeout", "0.5", "--quiet")
    assert code == 1 and "`unseen weights import aott FILE`" in err
    code, _, err = run_cli(capsys, "verify", "nothing")
    assert code == 1 and "unknown weights 'nothing'" in err


def test_add_commands_in_main_parser(folder: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="unseen")
    cli.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["weights", "list"])
    assert args.func(args) == 0 and "sam_vit_h" in capsys.readouterr().out
    args = parser.parse_args(["weights"])
    assert args.func(args) == 1


def test_python_dash_m(folder: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "unseen.weights", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: unseen weights")


# -- real models (skipped while their modules are absent) ----------------------------------------


def _reference_state(file: str) -> dict[str, torch.Tensor]:
    """A checkpoint with the official key layout, read off tests/reference_keys (random values)."""
    state = {}
    for line in (REFERENCE_KEYS / file).read_text().splitlines():
        key, shape, *rest = line.split("\t")
        dtype = getattr(torch, rest[0]) if rest else torch.float32
        size = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        state[key] = torch.zeros(size, dtype=dtype)
    return state


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not written yet")


@pytest.mark.parametrize("name, keys, ok", [
    ("aott", "aott.txt", True),
    ("aott", "aot2021_aott.txt", True),  # 2021 file: no LSTT.mask_token
    ("deaott", "deaott.txt", True),
    ("deaott", "aott.txt", False),
])
def test_real_aot_checkpoint_layout(tmp_path: Path, name: str, keys: str, ok: bool) -> None:
    _needs("unseen.engine.models.aot")
    state = _reference_state(keys)
    path = save({"state_dict": _prefixed(state), "optimizer": {}}, tmp_path / "ckpt.pth")
    report = loading.check(path, name)
    assert report.ok is ok, report.verdict
    if ok:
        model = loading.load_model(name, path)
        assert all(not v.is_floating_point() or not v.any() for k, v in model.state_dict().items()
                   if k not in report.tolerated)


def test_real_e2fgvi_checkpoint_layout(tmp_path: Path) -> None:
    _needs("unseen.engine.models.e2fgvi")
    state = _reference_state("e2fgvi_hq.txt")
    assert loading.check(state, "e2fgvi_hq").ok
    report = loading.check(state, "e2fgvi")
    assert not report.ok and "sc.bias" in str(report.missing + report.unexpected) + report.message


# -- a multi-file entry: NanoTrack V2 (two ONNX files, each with its own URL and sha256) ---------


def _provenance_rows(folder: Path) -> dict[str, tuple[int, str]]:
    """file -> (bytes, sha256) from the shared folder's PROVENANCE.md table."""
    rows = {}
    for line in (folder / "PROVENANCE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].endswith(".onnx"):
            rows[cells[0]] = (int(cells[1].replace(",", "")), cells[2])
    return rows


def test_nanotrack_entry_matches_provenance() -> None:
    folder = nanotrack_folder()
    entry = registry.get("nanotrack_v2")
    rows = _provenance_rows(folder)
    assert {f.filename: (f.size, f.sha256) for f in entry.files} == rows
    for spec in entry.files:
        assert spec.urls[0].endswith("/NanoTrack/models/nanotrackv2/" + spec.filename)
        assert spec.urls[0].startswith("https://raw.githubusercontent.com/HonglinChu/SiamTrackers/")
        assert store.sha256sum(folder / spec.filename) == spec.sha256


def _fake_nanotrack(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The registry's nanotrack_v2 entry pointed at two small stand-in files; returns their bytes."""
    import hashlib

    bodies = {"nanotrack_backbone_sim.onnx": b"backbone" * 1000, "nanotrack_head_sim.onnx": b"head" * 700}
    entry = REGISTRY["nanotrack_v2"]
    files = tuple(registry.WeightsFile(f.filename, f.urls, len(bodies[f.filename]),
                                       hashlib.sha256(bodies[f.filename]).hexdigest()) for f in entry.files)
    monkeypatch.setitem(REGISTRY, "nanotrack_v2", dataclasses.replace(entry, files=files))
    return bodies


def test_fetch_multi_file(server: Server, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = _fake_nanotrack(monkeypatch)
    for name, body in bodies.items():
        server.files["/mirror/" + name] = ("application/octet-stream", body)
    assert store.find("nanotrack_v2") is None
    path = store.fetch("nanotrack_v2", progress=False, url=url(server, "/mirror/"), timeout=5)
    assert path == folder / "nanotrack_v2" and store.find("nanotrack_v2") == path
    got = store.installed("nanotrack_v2")
    assert {n: got[n].read_bytes() for n in bodies} == bodies
    assert store.verify("nanotrack_v2").ok
    assert sorted(p for p, _ in server.seen) == sorted("/mirror/" + n for n in bodies)


def test_fetch_multi_file_sha_mismatch(server: Server, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = _fake_nanotrack(monkeypatch)
    server.files["/m/nanotrack_backbone_sim.onnx"] = ("application/octet-stream", bodies["nanotrack_backbone_sim.onnx"])
    wrong = bytearray(bodies["nanotrack_head_sim.onnx"])
    wrong[10] ^= 0xFF
    server.files["/m/nanotrack_head_sim.onnx"] = ("application/octet-stream", bytes(wrong))
    with pytest.raises(ChecksumError, match="nanotrack_head_sim.onnx has sha256") as err:
        store.fetch("nanotrack_v2", progress=False, url=url(server, "/m"), timeout=5)
    assert "\n" not in str(err.value) and "`unseen weights fetch nanotrack_v2` again" in str(err.value)
    assert store.find("nanotrack_v2") is None
    assert [p.name for p in (folder / "nanotrack_v2").iterdir()] == ["nanotrack_backbone_sim.onnx"]  # no .part
    with pytest.raises(MissingWeightsError, match="nanotrack_head_sim.onnx") as err:
        store.installed("nanotrack_v2")
    assert "`unseen weights import nanotrack_v2 DIR`" in str(err.value)


def test_fetch_real_nanotrack_from_loopback(server: Server, folder: Path, capsys) -> None:
    source = nanotrack_folder()
    for name in ("nanotrack_backbone_sim.onnx", "nanotrack_head_sim.onnx"):
        server.files["/nt/" + name] = ("application/octet-stream", (source / name).read_bytes())
    code, out, _ = run_cli(capsys, "fetch", "nanotrack_v2", "--url", url(server, "/nt"), "--quiet")
    assert code == 0 and out.startswith("OK nanotrack_v2: ")
    code, out, _ = run_cli(capsys, "verify", "nanotrack_v2")
    assert code == 0 and "sha256 of all 2 files matches" in out


def test_import_real_nanotrack(folder: Path, capsys) -> None:
    source = nanotrack_folder()
    code, out, _ = run_cli(capsys, "import", "nanotrack_v2", str(source))
    assert code == 0 and out.startswith("OK nanotrack_v2: imported")
    files = store.installed("nanotrack_v2")
    assert files["nanotrack_head_sim.onnx"].read_bytes() == (source / "nanotrack_head_sim.onnx").read_bytes()
    code, out, _ = run_cli(capsys, "check", str(source / "nanotrack_backbone_sim.onnx"), "--model", "nanotrack_v2")
    assert code == 0 and "official nanotrack_backbone_sim.onnx" in out


def test_import_refuses_corrupt_nanotrack(folder: Path, tmp_path: Path, capsys) -> None:
    source = nanotrack_folder()
    bad = tmp_path / "download"
    bad.mkdir()
    for name in ("nanotrack_backbone_sim.onnx", "nanotrack_head_sim.onnx"):
        (bad / name).write_bytes((source / name).read_bytes())
    body = bytearray((bad / "nanotrack_head_sim.onnx").read_bytes())
    body[len(body) // 2] ^= 0x01
    (bad / "nanotrack_head_sim.onnx").write_bytes(bytes(body))
    code, _, err = run_cli(capsys, "import", "nanotrack_v2", str(bad))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: nanotrack_head_sim.onnx has sha256") and "import nanotrack_v2 DIR" in err
    assert store.find("nanotrack_v2") is None and not (folder / "nanotrack_v2").exists()
    code, out, _ = run_cli(capsys, "check", str(bad / "nanotrack_head_sim.onnx"), "--model", "nanotrack_v2")
    assert code == 1 and "matches none of the official files" in out


def test_installed_refuses_a_file_changed_after_import(folder: Path) -> None:
    store.import_file("nanotrack_v2", nanotrack_folder())
    head = folder / "nanotrack_v2" / "nanotrack_head_sim.onnx"
    head.write_bytes(head.read_bytes()[:-1])
    with pytest.raises(ChecksumError, match="nanotrack_head_sim.onnx is 726197 bytes") as err:
        store.installed("nanotrack_v2")
    assert "\n" not in str(err.value) and "`unseen weights fetch nanotrack_v2`" in str(err.value)
