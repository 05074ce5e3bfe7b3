"""Fetching weight files into the local cache: resumable, verified, locked, offline-aware.

Only the standard library's urllib is used, so plain HTTPS release files and Google Drive
need no extra dependency. A file appears under its final name only once it is complete
and its sha256 checked, so a cached name is always a whole checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

from ..models.io import atomic_write

GDRIVE_URL = "https://drive.usercontent.google.com/download"
_CHUNK = 1 << 20
_ATTEMPTS = 3  # a dropped connection is resumed from the .part file this many times in all
_TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A weight file could not be fetched, or what was fetched is not the expected file."""


def default_cache_dir() -> Path:
    """``$SEMASK_HOME`` if set, else ``~/.cache/semask``."""
    home = os.environ.get("SEMASK_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "semask"


def is_offline() -> bool:
    return os.environ.get("SEMASK_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    filename: str,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Path of ``filename`` in the cache, fetching it from ``url`` first if it is not there."""
    return _download(url, filename, sha256, cache_dir, progress, html_page=None)


def download_gdrive(
    file_id: str,
    filename: str,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Like :func:`download_file` for a Google Drive file id, passing the large-file confirm page."""
    if not file_id or any(c in file_id for c in "/?&#= "):
        raise DownloadError(f"not a Google Drive file id: {file_id!r}")
    base = os.environ.get("SEMASK_GDRIVE_URL", GDRIVE_URL)
    url = f"{base}?{urllib.parse.urlencode({'id': file_id, 'export': 'download'})}"
    return _download(url, filename, sha256, cache_dir, progress, html_page=_gdrive_confirm_url)


def _download(
    url: str,
    filename: str,
    sha256: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    html_page: Callable[[bytes, str], str] | None,
) -> Path:
    if not filename or Path(filename).name != filename or filename.startswith("."):
        raise DownloadError(f"cache file name must be a plain file name, got {filename!r}")
    expected = sha256.lower() if sha256 else None
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = folder / filename
    if dest.is_file():
        return _verify_cached(dest, expected)
    if is_offline():
        raise DownloadError(_missing_message(dest, url, "SEMASK_OFFLINE=1 is set and"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{filename}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the file cached
        if dest.is_file():
            return _verify_cached(dest, expected)
        part = folder / f"{filename}.part"
        _fetch_with_retries(url, part, filename, progress, html_page)
        actual = sha256_of(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise DownloadError(
                f"sha256 mismatch for {filename} from {url}: expected {expected}, got {actual}; the file was deleted"
            )
        if expected is None:
            _write_atomic(_sha_path(dest), f"{actual}  {filename}\n")
        os.replace(part, dest)
    return dest


def _verify_cached(dest: Path, expected: str | None) -> Path:
    """Check a cache hit against the registry hash, else the hash recorded at download time."""
    sha_file = _sha_path(dest)
    recorded = sha_file.read_text().split()[0].lower() if sha_file.is_file() else None
    reference = expected or recorded
    actual = sha256_of(dest)
    if reference is None:
        _write_atomic(sha_file, f"{actual}  {dest.name}\n")
    elif actual != reference:
        dest.unlink()
        source = "expected" if expected else f"recorded in {sha_file.name}"
        raise DownloadError(
            f"sha256 mismatch for cached {dest}: {source} {reference}, got {actual}; "
            "the file was deleted, download it again"
        )
    return dest


def _missing_message(dest: Path, url: str, why: str) -> str:
    return f"{why} {dest.name} is not in the cache: download it from {url} and put it at {dest}"


def _sha_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class _Incomplete(Exception):
    """The connection ended before the announced length: resume from the .part file."""


def _fetch_with_retries(
    url: str,
    part: Path,
    filename: str,
    progress: bool,
    html_page: Callable[[bytes, str], str] | None,
) -> None:
    for attempt in range(_ATTEMPTS):
        try:
            _fetch(url, part, filename, progress, html_page)
            return
        except _Incomplete as err:
            if attempt == _ATTEMPTS - 1:
                raise DownloadError(
                    f"download of {url} kept breaking off ({err}); the partial file {part} "
                    "is kept and the next try resumes it"
                ) from err


def _fetch(
    url: str,
    part: Path,
    filename: str,
    progress: bool,
    html_page: Callable[[bytes, str], str] | None,
) -> None:
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "semask"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # our .part is not a prefix the server knows: start over
            part.unlink()
            return _fetch(url, part, filename, progress, html_page)
        raise DownloadError(f"HTTP {err.code} {err.reason} from {url}") from err
    except urllib.error.URLError as err:
        raise DownloadError(_missing_message(part.with_suffix(""), url, f"cannot reach {url} ({err.reason}):")) from err
    with response:
        resumed = start > 0 and response.status == 206
        if not resumed:
            start = 0
        content_type = response.headers.get("Content-Type", "")
        first = _read(response)
        head = first.lstrip()[:15].lower()
        if "text/html" in content_type.lower() or (not resumed and head.startswith((b"<!doctype", b"<html"))):
            if html_page is not None:
                body = first + response.read()
                return _fetch(html_page(body, url), part, filename, progress, None)
            raise DownloadError(
                f"{url} answered an HTML page (quota exceeded / access denied page, not a checkpoint); "
                "nothing was saved"
            )
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=filename,
                disable=not progress,
            ) as bar,
        ):
            chunk = first
            while chunk:
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                chunk = _read(response)
    if total is not None and received < total:
        raise _Incomplete(f"got {received} of {total} bytes")
    return None


def _read(response) -> bytes:
    try:
        return response.read(_CHUNK)
    except (http.client.HTTPException, OSError) as err:  # IncompleteRead, reset, timeout
        raise _Incomplete(str(err)) from err


class _HiddenForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action") or ""
        elif tag == "input" and (a.get("type") or "").lower() == "hidden" and a.get("name"):
            self.fields[a["name"] or ""] = a.get("value") or ""


def _gdrive_confirm_url(body: bytes, url: str) -> str:
    """The download URL behind Drive's "can't scan this file for viruses" page."""
    form = _HiddenForm()
    form.feed(body.decode("utf-8", errors="replace"))
    if "confirm" not in form.fields:
        raise DownloadError(
            f"Google Drive answered {url} with an HTML page that is not the large-file confirm form "
            "(quota exceeded / access denied page, not a checkpoint); nothing was saved"
        )
    action = urllib.parse.urljoin(url, form.action) if form.action else url.split("?", 1)[0]
    return f"{action}?{urllib.parse.urlencode(form.fields)}"
