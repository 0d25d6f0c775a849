"""Offline tests of the resumable downloader against a local HTTP server."""

import hashlib
import http.server
import tarfile
import threading
from pathlib import Path

import pytest

from espnet2_birq.dataprep import download as dl

PAYLOAD = bytes((i * 7 + 3) % 251 for i in range(300_000))
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _State:
    def __init__(self):
        self.requests = []  # (path, range header)
        self.mode = "normal"  # normal | ignore_range | truncate | corrupt


@pytest.fixture()
def server():
    state = _State()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            if self.path != "/file.bin":
                self.send_error(404)
                return
            data = PAYLOAD
            if state.mode == "corrupt":
                data = PAYLOAD[:-1] + b"\x00"
            start = 0
            if rng and state.mode != "ignore_range":
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.mode == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fresh_download_marker_and_skip(server, tmp_path):
    url, state = server
    dest = tmp_path / "sub" / "file.bin"
    dl.download(f"{url}/file.bin", dest, md5=MD5, retry_wait=0, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "sub" / "file.bin.done").read_text().strip() == MD5
    assert not Path(str(dest) + ".part").exists()
    n = len(state.requests)
    dl.download(f"{url}/file.bin", dest, md5=MD5, retry_wait=0)  # skipped
    assert len(state.requests) == n


def test_resume_from_truncated_partial(server, tmp_path):
    url, state = server
    dest = tmp_path / "file.bin"
    Path(str(dest) + ".part").write_bytes(PAYLOAD[:123_457])
    dl.download(f"{url}/file.bin", dest, sha256=SHA256, size=len(PAYLOAD), retry_wait=0)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[-1][1] == "bytes=123457-"


def test_partial_already_complete_416(server, tmp_path):
    url, state = server
    dest = tmp_path / "file.bin"
    Path(str(dest) + ".part").write_bytes(PAYLOAD)
    dl.download(f"{url}/file.bin", dest, md5=MD5, retry_wait=0)
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    url, state = server
    state.mode = "ignore_range"
    dest = tmp_path / "file.bin"
    Path(str(dest) + ".part").write_bytes(b"garbage-prefix")
    dl.download(f"{url}/file.bin", dest, md5=MD5, retry_wait=0)
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_transfer_errors_then_resumes(server, tmp_path):
    url, state = server
    state.mode = "truncate"
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.DownloadError, match="re-run to resume"):
        dl.download(f"{url}/file.bin", dest, md5=MD5, retries=1, retry_wait=0)
    part = Path(str(dest) + ".part")
    assert part.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    assert not dest.exists()
    state.mode = "normal"
    dl.download(f"{url}/file.bin", dest, md5=MD5, retry_wait=0)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_checksum_mismatch(server, tmp_path):
    url, state = server
    state.mode = "corrupt"
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.ChecksumError, match="md5"):
        dl.download(f"{url}/file.bin", dest, md5=MD5, retry_wait=0)
    assert not dest.exists()
    assert not Path(str(dest) + ".part").exists()
    assert not Path(str(dest) + ".done").exists()


def test_size_mismatch(server, tmp_path):
    url, _ = server
    with pytest.raises(dl.ChecksumError, match="size"):
        dl.download(f"{url}/file.bin", tmp_path / "f", size=len(PAYLOAD) + 1, retry_wait=0)


def test_existing_file_without_marker_is_verified(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    dl.download("http://127.0.0.1:9/unused", dest, md5=MD5)
    assert Path(str(dest) + ".done").exists()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"x")
    with pytest.raises(dl.ChecksumError):
        dl.download("http://127.0.0.1:9/unused", bad, md5=MD5)


def test_404_is_clear_error(server, tmp_path):
    url, state = server
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download(f"{url}/missing.bin", tmp_path / "m", retries=3, retry_wait=0)
    assert len(state.requests) == 1  # not retried


def test_cli(server, tmp_path):
    url, _ = server
    assert dl.main([f"{url}/file.bin", str(tmp_path / "a"), "--md5", MD5]) == 0
    assert dl.main([f"{url}/file.bin", str(tmp_path / "b"), "--md5", "0" * 32]) == 1


def test_extract_marker_and_traversal(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("hello")
    arc = tmp_path / "x.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src / "d", arcname="d")
    out = tmp_path / "out"
    dl.extract(arc, out)
    assert (out / "d" / "a.txt").read_text() == "hello"
    (out / "d" / "a.txt").unlink()
    dl.extract(arc, out)  # marker: not extracted again
    assert not (out / "d" / "a.txt").exists()

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        import io
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(Exception):
        dl.extract(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(arc.read_bytes()[:20])
    with pytest.raises(dl.DownloadError, match="cannot extract"):
        dl.extract(broken, tmp_path / "out3")
