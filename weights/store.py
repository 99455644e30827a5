"""The weights folder: finding, downloading, importing and verifying checkpoint files.

The folder is the ``--weights-dir`` flag, else ``$UNSEEN_WEIGHTS``, else
``~/.cache/unseen/weights``.  A checkpoint lives there under its official file
name.  Downloads resume (HTTP ``Range`` into ``<file>.part``) and land with an
atomic rename only after their size/sha256 (when known) or a strict load (when
not) proved them right.  This is the only module that touches the network.

A multi-file entry (NanoTrack's two ONNX files) is a folder named after the entry holding its files under
their official names; each file is fetched, imported and verified by its own sha256, and the entry is
installed when every file is there (:func:`installed` hands the checked paths to a backend).
"""
from __future__ import annotations

import hashlib
import html
import http.client
import os
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from http.cookiejar import CookieJar
from pathlib import Path

from tqdm import tqdm

from .checkpoint import check, is_torch_archive
from .registry import (ChecksumError, CheckpointError, DownloadError, MissingWeightsError, WeightsEntry,
                       WeightsError, WeightsFile, get)

__all__ = ["ENV_VAR", "PART_SUFFIX", "InstalledFiles", "VerifyResult", "WeightsError", "fetch", "find",
           "import_file", "installed", "is_torch_archive", "path_for", "sha256sum", "verify", "weights_dir"]

ENV_VAR = "UNSEEN_WEIGHTS"
DEFAULT_DIR = Path("~/.cache/unseen/weights")
PART_SUFFIX = ".part"
_CHUNK = 1 << 20
_MAX_PAGE = 1 << 20  # bytes of an HTML interstitial page read to find the confirm link
_USER_AGENT = "unseen-weights/0.1 (python urllib)"


def weights_dir(flag: Path | str | None = None) -> Path:
    """The weights folder: ``flag``, else ``$UNSEEN_WEIGHTS``, else ``~/.cache/unseen/weights``."""
    return _folder(flag)


def _folder(flag: Path | str | None) -> Path:
    if flag is not None and str(flag) != "":
        return Path(flag).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_DIR.expanduser()


def path_for(name: str, folder: Path | str | None = None) -> Path:
    """Where checkpoint ``name`` lives (or would live) in the weights folder."""
    return _folder(folder) / get(name).filename


def find(name: str, weights_dir: Path | str | None = None) -> Path | None:
    """The file of checkpoint ``name`` if it is in the weights folder under its official name (a multi-file
    entry: its folder, when every file is in it)."""
    path = path_for(name, weights_dir)
    entry = get(name)
    if entry.multi:
        return path if all((path / f.filename).is_file() for f in entry.files) else None
    return path if path.is_file() else None


def sha256sum(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _import_hint(entry: WeightsEntry) -> str:
    files = get(entry.name).files
    if files:
        return (f"download {', '.join(f.filename for f in files)} elsewhere into one folder and run "
                f"`unseen weights import {entry.name} DIR`")
    return f"download {entry.filename} elsewhere and run `unseen weights import {entry.name} FILE`"


def _file_entry(entry: WeightsEntry, part: WeightsFile) -> WeightsEntry:
    """One file of a multi-file entry seen as a single-file entry (for downloading and checking it)."""
    return replace(entry, filename=part.filename, urls=part.urls, size=part.size, sha256=part.sha256, files=())


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text[:160] if text else type(value).__name__


# -- downloading --------------------------------------------------------------------------------


def _open(opener: urllib.request.OpenerDirector, url: str, start: int, timeout: float,
          entry: WeightsEntry) -> http.client.HTTPResponse | None:
    """Open ``url`` from byte ``start``; ``None`` when the server says the range is already complete."""
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    host = urllib.parse.urlsplit(url).hostname or url
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            return None
        cause = f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        cause = _one_line(exc.reason)
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad status lines
        cause = _one_line(exc) if not isinstance(exc, socket.timeout) else f"no answer within {timeout:g} s"
    raise DownloadError(f"cannot download {entry.name} from {host}: {cause}; {_import_hint(entry)}")


def _drive_confirm_url(page: str, url: str) -> str | None:
    """The real download URL behind Google Drive's "can't scan this file" page, if any."""
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"', page)
    if form:
        fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
        query = urllib.parse.urlencode({k: html.unescape(v) for k, v in fields.items()})
        return urllib.parse.urljoin(url, html.unescape(form.group(1))) + ("?" + query if query else "")
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query), confirm=token.group(1))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return None


def _transfer(url: str, part: Path, entry: WeightsEntry, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its current size)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    have = part.stat().st_size if part.exists() else 0
    for _hop in range(3):  # the file, or at most two interstitial pages before it
        response = _open(opener, url, have, timeout, entry)
        if response is None:  # 416: the part already holds the whole file
            return
        if not response.headers.get_content_type().startswith("text/html"):
            break
        page = response.read(_MAX_PAGE).decode("utf-8", "replace")
        response.close()
        next_url = _drive_confirm_url(page, url)
        if next_url is None:
            raise DownloadError(f"{urllib.parse.urlsplit(url).hostname} sent a web page instead of {entry.filename} "
                                f"(quota, login or moved file); {_import_hint(entry)}")
        url = next_url
    else:
        raise DownloadError(f"too many interstitial pages downloading {entry.name}; {_import_hint(entry)}")
    with response:
        if response.status != 206:  # the server ignored Range (or there was none): start over
            have = 0
        elif not (response.headers.get("Content-Range") or "").startswith(f"bytes {have}-"):
            part.unlink(missing_ok=True)
            raise DownloadError(f"the server resumed {entry.name} at the wrong offset; "
                                f"run `unseen weights fetch {entry.name}` again to restart")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else entry.size
        try:
            with open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=entry.filename, disable=not progress, leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            cause = f"no data for {timeout:g} s" if isinstance(exc, socket.timeout) else _one_line(exc)
            raise DownloadError(f"download of {entry.name} interrupted after {have} bytes ({cause}); "
                                f"run `unseen weights fetch {entry.name}` again to resume") from exc
    if total is not None and have < total:
        raise DownloadError(f"download of {entry.name} interrupted after {have} of {total} bytes; "
                            f"run `unseen weights fetch {entry.name}` again to resume")


def _check_integrity(path: Path, entry: WeightsEntry, action: str) -> bool:
    """Check size and sha256 where known; ``True`` if the sha256 proved the file official."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise ChecksumError(f"{entry.filename} is {size} bytes, expected {entry.size}; {action}")
    if entry.sha256 is None:
        return False
    digest = sha256sum(path)
    if digest != entry.sha256:
        raise ChecksumError(f"{entry.filename} has sha256 {digest[:12]}..., expected {entry.sha256[:12]}...; {action}")
    return True


def _unpack_archive(path: Path, entry: WeightsEntry) -> None:
    """Replace a plain zip archive holding the checkpoint (E2FGVI's README) by the checkpoint itself."""
    if not zipfile.is_zipfile(path) or is_torch_archive(path):
        return
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        wanted = [m for m in members if Path(m.filename).name == entry.filename]
        wanted = wanted or [m for m in members if m.filename.endswith((".pth", ".pt"))]
        if len(wanted) != 1:
            raise CheckpointError(f"{path.name} is a zip archive without a single {entry.filename}; unpack it and "
                                  f"run `unseen weights import {entry.name} FILE`")
        unpacked = path.with_name(path.name + ".unzip")
        with archive.open(wanted[0]) as src, open(unpacked, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    os.replace(unpacked, path)


def _strict_check(path: Path, entry: WeightsEntry) -> str:
    report = check(path, entry.name)
    if not report.ok:
        raise CheckpointError(report.message)
    return report.message


def fetch(name: str, weights_dir: Path | str | None = None, progress: bool = True, *, url: str | None = None,
          timeout: float = 30.0) -> Path:
    """Download checkpoint ``name`` into the weights folder and return its path.

    Resumes an earlier partial download, follows Google Drive's confirm page,
    checks size/sha256 when known (else a strict load), then renames atomically.
    The registry's URLs are tried in order; ``url`` replaces them (a mirror).  A file
    already present is kept.
    Raises :class:`DownloadError`, :class:`ChecksumError` or :class:`CheckpointError`.
    """
    entry = get(name)
    dest = path_for(entry.name, weights_dir)
    if entry.multi:
        return _fetch_files(entry, dest, progress, url, timeout)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    _download((url,) if url else entry.urls, part, entry, progress, timeout)
    try:
        official = _check_integrity(part, entry, f"run `unseen weights fetch {entry.name}` again")
        _unpack_archive(part, entry)
        if not official:
            _strict_check(part, entry)
    except (ChecksumError, CheckpointError):
        part.unlink(missing_ok=True)  # resuming a wrong file cannot fix it
        raise
    os.replace(part, dest)
    return dest


def _download(sources: tuple[str, ...], part: Path, entry: WeightsEntry, progress: bool, timeout: float) -> None:
    """Fill ``part`` from the first of ``sources`` that works (resuming what it holds)."""
    if entry.size is not None and part.exists() and part.stat().st_size > entry.size:
        part.unlink()
    for index, source in enumerate(sources):
        try:
            _transfer(source, part, entry, progress, timeout)
            return
        except DownloadError:
            if index == len(sources) - 1:
                raise


def _fetch_files(entry: WeightsEntry, dest: Path, progress: bool, url: str | None, timeout: float) -> Path:
    """Each file of a multi-file entry into its folder (``url``: a mirror folder), checked by its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    for spec in entry.files:
        target = dest / spec.filename
        if target.is_file():
            continue
        one = _file_entry(entry, spec)
        part = target.with_name(target.name + PART_SUFFIX)
        _download((url.rstrip("/") + "/" + spec.filename,) if url else spec.urls, part, one, progress, timeout)
        try:
            _check_integrity(part, one, f"run `unseen weights fetch {entry.name}` again")
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
    return dest


# -- verifying and importing --------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`; :attr:`verdict` is one line."""

    name: str
    path: Path
    ok: bool
    message: str

    @property
    def verdict(self) -> str:
        return f"{'OK' if self.ok else 'FAIL'} {self.name}: {self.path}: {self.message}"


def _verify_files(folder: Path, entry: WeightsEntry) -> VerifyResult:
    """A multi-file entry's files against their sha256 (no load can vouch for them)."""
    for spec in entry.files:
        digest = sha256sum(folder / spec.filename)
        if digest != spec.sha256:
            return VerifyResult(entry.name, folder, False, f"{spec.filename} has sha256 {digest[:12]}..., expected "
                                f"{spec.sha256[:12]}...; {_import_hint(entry)}")
    return VerifyResult(entry.name, folder, True, f"sha256 of all {len(entry.files)} files matches the official ones")


def _verify_file(path: Path, entry: WeightsEntry) -> VerifyResult:
    if entry.multi:
        return _verify_files(path, entry)
    if entry.sha256 is not None and sha256sum(path) == entry.sha256:
        return VerifyResult(entry.name, path, True, "sha256 matches the official file")
    if entry.sha256 is None and entry.size is not None and path.stat().st_size == entry.size:
        return VerifyResult(entry.name, path, True, "size matches the official file")
    note = "not the official file (sha256 differs), but " if entry.sha256 else ""
    report = check(path, entry.name)
    return VerifyResult(entry.name, path, report.ok, note + report.message)


def verify(name: str, weights_dir: Path | str | None = None) -> VerifyResult:
    """Check the installed file of ``name``: sha256 (or size) when known, else a strict load.

    A file whose sha256 differs from the official one (a re-saved or fine-tuned
    copy) is still accepted if it loads strictly.  Raises :class:`MissingWeightsError`
    when it is not installed.
    """
    entry = get(name)
    path = find(entry.name, weights_dir)
    if path is None:
        raise MissingWeightsError(
            f"{entry.filename} is not in {_folder(weights_dir)}; run `unseen weights fetch "
            f"{entry.name}` or `unseen weights import {entry.name} FILE`")
    return _verify_file(path, entry)


def import_file(name: str, file: Path | str, weights_dir: Path | str | None = None) -> Path:
    """Copy the user's checkpoint ``file`` into the weights folder as ``name``, after a strict check.

    A zip archive holding the checkpoint is unpacked.  The copy lands atomically;
    on failure nothing is left behind.  Returns the installed path.
    """
    entry = get(name)
    src = Path(file).expanduser()
    if entry.multi:
        return _import_folder(entry, src, path_for(entry.name, weights_dir))
    if not src.is_file():
        raise MissingWeightsError(f"{src} does not exist; pass an existing file to "
                                  f"`unseen weights import {entry.name} FILE`")
    dest = path_for(entry.name, weights_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".import")
    try:
        archive = zipfile.is_zipfile(src) and not is_torch_archive(src)
        if archive:  # unpack first, then check what came out
            shutil.copyfile(src, part)
            _unpack_archive(part, entry)
        result = _verify_file(part if archive else src, entry)
        if not result.ok:
            raise CheckpointError(f"{src.name} was not imported: {result.message}")
        if not archive:
            shutil.copyfile(src, part)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _import_folder(entry: WeightsEntry, src: Path, dest: Path) -> Path:
    """A multi-file entry from the user's folder: every file checked by sha256, then the folder lands whole."""
    if not src.is_dir():
        raise MissingWeightsError(f"{src} is not a folder; pass the folder holding "
                                  f"{', '.join(f.filename for f in entry.files)} to `unseen weights import "
                                  f"{entry.name} DIR`")
    for spec in entry.files:
        if not (src / spec.filename).is_file():
            raise MissingWeightsError(f"{spec.filename} is not in {src}; {_import_hint(entry)}")
        _check_integrity(src / spec.filename, _file_entry(entry, spec),
                         f"{src} was not imported; {_import_hint(entry)}")
    staging = dest.with_name(dest.name + ".import")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for spec in entry.files:
            shutil.copyfile(src / spec.filename, staging / spec.filename)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


@dataclass(frozen=True)
class InstalledFiles:
    """The checked files of an installed multi-file entry, what a backend is handed to read."""

    name: str
    paths: dict[str, Path]  # official file name -> its path

    def __getitem__(self, filename: str) -> Path:
        return self.paths[filename]


def installed(name: str, weights_dir: Path | str | None = None) -> InstalledFiles:
    """The files of multi-file entry ``name``, each checked against its sha256.

    Raises :class:`MissingWeightsError` when one is absent, :class:`ChecksumError` when one differs (one line
    each, naming the command that fixes it)."""
    entry = get(name)
    folder = path_for(entry.name, weights_dir)
    fix = f"run `unseen weights fetch {entry.name}` or, offline, `unseen weights import {entry.name} DIR`"
    missing = [f.filename for f in entry.files if not (folder / f.filename).is_file()]
    if missing:
        raise MissingWeightsError(f"weights {entry.name} ({', '.join(missing)}) not found in {folder.parent}; {fix}")
    for spec in entry.files:
        _check_integrity(folder / spec.filename, _file_entry(entry, spec), fix)
    return InstalledFiles(entry.name, {f.filename: folder / f.filename for f in entry.files})
