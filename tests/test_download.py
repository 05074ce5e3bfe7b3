"""semask.hub.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from semask.hub.download import DownloadError, download_file, download_gdrive, record_hash

BODY = bytes(range(256)) * 1024  # 256 KiB, not text, not HTML
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        self.server.log.append((path, dict(urllib.parse.parse_qsl(query)), self.headers.get("Range")))
        route = ROUTES.get(path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self, dict(urllib.parse.parse_qsl(query)))

    def send_bytes(self, data: bytes, *, content_type: str = "application/octet-stream", delay: float = 0.0) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        for i in range(start, len(data), 32 * 1024):
            self.wfile.write(data[i : i + 32 * 1024])
            time.sleep(delay)


def _file(h: _Handler, q: dict) -> None:
    h.send_bytes(BODY)


def _slow(h: _Handler, q: dict) -> None:
    h.send_bytes(BODY, delay=0.05)


def _drop(h: _Handler, q: dict) -> None:
    if h.headers.get("Range") is None:  # announce the whole body, send half, hang up
        h.send_response(200)
        h.send_header("Content-Length", str(len(BODY)))
        h.end_headers()
        h.wfile.write(BODY[: len(BODY) // 2])
        h.wfile.flush()
        h.close_connection = True
        return
    h.send_bytes(BODY)


def _norange(h: _Handler, q: dict) -> None:  # a server that ignores Range: always 200, whole body
    h.send_response(200)
    h.send_header("Content-Length", str(len(BODY)))
    h.end_headers()
    h.wfile.write(BODY)


def _html(h: _Handler, q: dict) -> None:
    h.send_bytes(b"<html><body>Quota exceeded</body></html>", content_type="text/html; charset=utf-8")


def _html_body(h: _Handler, q: dict) -> None:
    h.send_bytes(b"\n<!DOCTYPE html><html>Access denied</html>")


def _gdrive(h: _Handler, q: dict) -> None:
    if q.get("confirm") == "t" and q.get("uuid") == "u-123" and q.get("id") == "FILEID":
        h.send_bytes(BODY)
        return
    form = (
        "<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses."
        '<form id="download-form" action="/gdrive" method="get">'
        '<input type="submit" value="Download anyway"/>'
        '<input type="hidden" name="id" value="FILEID">'
        '<input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t">'
        '<input type="hidden" name="uuid" value="u-123"></form></body></html>'
    )
    h.send_bytes(form.encode(), content_type="text/html; charset=utf-8")


def _gdrive_quota(h: _Handler, q: dict) -> None:
    h.send_bytes(b"<!DOCTYPE html><html>Too many users have viewed this file</html>", content_type="text/html")


ROUTES = {
    "/file.bin": _file,
    "/slow.bin": _slow,
    "/drop.bin": _drop,
    "/norange.bin": _norange,
    "/page.html": _html,
    "/sneaky.bin": _html_body,
    "/gdrive": _gdrive,
    "/gdrive_quota": _gdrive_quota,
}


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.log = []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("SEMASK_OFFLINE", raising=False)
    monkeypatch.setenv("SEMASK_HOME", str(tmp_path / "home"))


def _gets(srv, path: str) -> list:
    return [entry for entry in srv.log if entry[0] == path]


def test_success_then_cache_hit_without_request(server, tmp_path):
    path = download_file(f"{server.url}/file.bin", "w.bin", progress=False)
    assert path == tmp_path / "home" / "w.bin"
    assert path.read_bytes() == BODY
    assert not (tmp_path / "home" / "w.bin.sha256").exists()  # recorded once it has loaded, not before
    record_hash(path)
    assert (tmp_path / "home" / "w.bin.sha256").read_text().split()[0] == BODY_SHA
    assert not (tmp_path / "home" / "w.bin.part").exists()
    again = download_file(f"{server.url}/file.bin", "w.bin", progress=False)
    assert again == path and len(_gets(server, "/file.bin")) == 1


def test_progress_bar_shows_size(server, tmp_path, capsys):
    download_file(f"{server.url}/file.bin", "p.bin", cache_dir=tmp_path / "c", progress=True)
    err = capsys.readouterr().err
    assert "p.bin" in err and "256k" in err.lower()


def test_recorded_hash_catches_corrupted_cache(server, tmp_path):
    path = download_file(f"{server.url}/file.bin", "w.bin", progress=False)
    record_hash(path)  # it loaded
    path.write_bytes(BODY[:-1] + b"x")
    with pytest.raises(DownloadError, match=BODY_SHA) as info:
        download_file(f"{server.url}/file.bin", "w.bin", progress=False)
    moved = list((tmp_path / "home").glob("w.bin.mismatch-*"))
    assert "w.bin.sha256" in str(info.value) and not path.exists()
    assert len(moved) == 1 and f"moved aside to {moved[0]}" in str(info.value)  # never deleted
    assert moved[0].read_bytes() == BODY[:-1] + b"x"
    assert download_file(f"{server.url}/file.bin", "w.bin", progress=False).read_bytes() == BODY  # fetched again


@pytest.mark.parametrize("gone", ["moved aside", "deleted by hand"])
def test_a_hash_record_goes_with_its_file(server, tmp_path, gone):
    """The record describes the file that loaded: once that file is gone, a new download (whose bytes
    differ: the server's file changed) is judged by its own hash, not rejected on every other load."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "w.bin").write_bytes(b"an older release")
    record_hash(home / "w.bin")  # it loaded
    if gone == "moved aside":
        (home / "w.bin").write_bytes(b"an older release, rotted")
        with pytest.raises(DownloadError, match="moved aside"):
            download_file(f"{server.url}/file.bin", "w.bin", progress=False)
        assert not (home / "w.bin.sha256").exists()
    else:
        (home / "w.bin").unlink()
    for _ in range(3):  # load, load, load: downloaded once, then checked against its own record
        path = download_file(f"{server.url}/file.bin", "w.bin", progress=False)
        assert path.read_bytes() == BODY
        record_hash(path)
        assert (home / "w.bin.sha256").read_text().split()[0] == BODY_SHA
    assert len(_gets(server, "/file.bin")) == 1


def test_a_copy_put_back_after_a_move_aside_loads(server, tmp_path):
    """After a move-aside the record is gone with the file, so a copy put there by hand (offline) is used."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "w.bin").write_bytes(b"first copy")
    record_hash(home / "w.bin")
    (home / "w.bin").write_bytes(b"first copy, rotted")
    with pytest.raises(DownloadError, match="if you replaced it on purpose, move it back"):
        download_file(f"{server.url}/file.bin", "w.bin", progress=False)
    (home / "w.bin").write_bytes(b"second copy")
    assert download_file(f"{server.url}/file.bin", "w.bin", progress=False).read_bytes() == b"second copy"
    assert server.log == []


@pytest.mark.parametrize("record", ["", "\n", "not-a-hash  w.bin\n", "abc\x00\xff"])
def test_an_empty_or_garbled_record_counts_as_none(server, tmp_path, record):
    home = tmp_path / "home"
    home.mkdir()
    (home / "w.bin").write_bytes(BODY)
    (home / "w.bin.sha256").write_bytes(record.encode("latin-1"))
    assert download_file(f"{server.url}/file.bin", "w.bin", progress=False).read_bytes() == BODY  # no IndexError
    assert server.log == []
    record_hash(home / "w.bin")  # rewritten once the file has loaded
    assert (home / "w.bin.sha256").read_text().split()[0] == BODY_SHA


@pytest.fixture()
def read_only(tmp_path):
    """A folder holding a cached file and no hash record that this process cannot write to:
    permissions for a normal user, a read-only bind mount for root."""
    import os
    import subprocess

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    (src / "w.bin").write_bytes(BODY)
    if os.geteuid() != 0:
        src.chmod(0o555)
        yield src
        src.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("running as root without the right to mount: cannot make a read-only folder")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_a_read_only_cache_is_used_as_it_is(server, read_only):
    with pytest.raises(OSError):
        (read_only / "probe").write_bytes(b"")  # it is read-only
    path = download_file(f"{server.url}/file.bin", "w.bin", cache_dir=read_only, progress=False)
    assert path == read_only / "w.bin" and server.log == []
    record_hash(path)  # cannot write the record: the file is used unverified, no error
    assert not (read_only / "w.bin.sha256").exists()
    # a registry hash that does not match: the file cannot be moved aside either, and the error says so
    with pytest.raises(DownloadError, match="left in place"):
        download_file(f"{server.url}/file.bin", "w.bin", sha256="0" * 64, cache_dir=read_only, progress=False)
    with pytest.raises(DownloadError, match=f"cannot write to the weights cache {read_only}"):
        download_file(f"{server.url}/file.bin", "other.bin", cache_dir=read_only, progress=False)


def test_resume_after_dropped_connection(server):
    path = download_file(f"{server.url}/drop.bin", "d.bin", sha256=BODY_SHA, progress=False)
    assert path.read_bytes() == BODY
    log = _gets(server, "/drop.bin")
    assert [rng for _, _, rng in log] == [None, f"bytes={len(BODY) // 2}-"]


def test_part_restarts_when_server_ignores_range(server, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "r.bin.part").write_bytes(b"garbage that is not a prefix")
    server.log.clear()
    path = download_file(f"{server.url}/norange.bin", "r.bin", sha256=BODY_SHA, progress=False)
    assert path.read_bytes() == BODY
    assert _gets(server, "/norange.bin")[0][2] is not None  # it asked to resume, got 200, restarted


@pytest.mark.parametrize("route", ["/page.html", "/sneaky.bin"])
def test_html_answer_is_error_and_not_cached(server, tmp_path, route):
    with pytest.raises(DownloadError, match="not a checkpoint") as info:
        download_file(f"{server.url}{route}", "h.bin", progress=False)
    assert f"{server.url}{route}" in str(info.value)
    home = tmp_path / "home"
    assert not (home / "h.bin").exists() and not (home / "h.bin.part").exists()


def test_404_names_url(server, tmp_path):
    with pytest.raises(DownloadError, match="404") as info:
        download_file(f"{server.url}/nope.pth", "n.bin", progress=False)
    assert f"{server.url}/nope.pth" in str(info.value)
    assert not (tmp_path / "home" / "n.bin").exists()


def test_sha_mismatch_deletes_and_names_both(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download_file(f"{server.url}/file.bin", "s.bin", sha256=wrong, progress=False)
    assert wrong in str(info.value) and BODY_SHA in str(info.value)
    home = tmp_path / "home"
    assert not (home / "s.bin").exists() and not (home / "s.bin.part").exists()  # our own download: deleted
    (home / "s.bin").write_bytes(BODY)  # a file put there by hand with the wrong hash is moved aside, not deleted
    with pytest.raises(DownloadError, match="moved aside"):
        download_file(f"{server.url}/file.bin", "s.bin", sha256=wrong, progress=False)
    assert [p.read_bytes() for p in home.glob("s.bin.mismatch-*")] == [BODY]


def test_offline(server, tmp_path, monkeypatch):
    url = f"{server.url}/file.bin"
    monkeypatch.setenv("SEMASK_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        download_file(url, "o.bin", progress=False)
    msg = str(info.value)
    assert "SEMASK_OFFLINE" in msg and url in msg and str(tmp_path / "home" / "o.bin") in msg
    assert server.log == []
    monkeypatch.delenv("SEMASK_OFFLINE")
    download_file(url, "o.bin", sha256=BODY_SHA, progress=False)
    monkeypatch.setenv("SEMASK_OFFLINE", "1")
    assert download_file(url, "o.bin", sha256=BODY_SHA, progress=False).read_bytes() == BODY
    assert len(_gets(server, "/file.bin")) == 1


def test_gdrive_confirm_flow(server, monkeypatch):
    monkeypatch.setenv("SEMASK_GDRIVE_URL", f"{server.url}/gdrive")
    path = download_gdrive("FILEID", "g.pth", sha256=BODY_SHA, progress=False)
    assert path.read_bytes() == BODY
    queries = [q for _, q, _ in _gets(server, "/gdrive")]
    assert queries == [
        {"id": "FILEID", "export": "download"},
        {"id": "FILEID", "export": "download", "confirm": "t", "uuid": "u-123"},
    ]


def test_gdrive_quota_page_is_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMASK_GDRIVE_URL", f"{server.url}/gdrive_quota")
    with pytest.raises(DownloadError, match="not a checkpoint"):
        download_gdrive("FILEID", "q.pth", progress=False)
    assert not (tmp_path / "home" / "q.pth").exists()


def _worker(url: str, cache: str, barrier, out) -> None:
    barrier.wait()
    try:
        out.put(str(download_file(url, "shared.bin", cache_dir=cache, progress=False)))
    except Exception as err:  # report, so the parent fails with the reason instead of waiting
        out.put(f"error: {err!r}")


def test_two_processes_one_download(server, tmp_path):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(f"{server.url}/slow.bin", str(tmp_path / "mp"), barrier, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    paths = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(_gets(server, "/slow.bin")) == 1
    assert paths[0] == paths[1] and Path(paths[0]).read_bytes() == BODY


def test_bad_file_name():
    with pytest.raises(DownloadError, match="plain file name"):
        download_file("http://127.0.0.1:1/x", "../x.bin", progress=False)
