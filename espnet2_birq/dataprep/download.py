"""Resumable HTTP(S) downloads with checksum verification and marker files.

Design
------
* The payload is written to ``<dest>.part``. If a ``.part`` file already
  exists, the download resumes with an HTTP ``Range: bytes=<n>-`` request.
  A server that ignores the range (answers ``200``) makes us restart from
  zero; ``416`` means the partial file is already complete.
* When the transfer finishes, the size (``Content-Length`` / ``Content-Range``
  total or ``expected_size``) and the checksum (md5 or sha256) are verified;
  only then is ``.part`` renamed to ``dest`` and a marker ``<dest>.done``
  written (containing the verified digest). A later call sees the marker and
  skips the file.
* A network failure leaves ``.part`` in place (a clear error is raised, and a
  re-run resumes); a checksum/size mismatch removes the corrupt ``.part``
  (it cannot be resumed) and raises :class:`ChecksumError`.

The module is usable as a CLI::

    python -m espnet2_birq.dataprep.download URL DEST [--md5 X | --sha256 X]
        [--size N] [--extract_to DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "espnet2-birq-dataprep/1.0"


class DownloadError(RuntimeError):
    """The transfer failed; a partial file (if any) is kept for resuming."""


class ChecksumError(DownloadError):
    """The downloaded file does not match the expected size or checksum."""


def marker_path(dest: Path) -> Path:
    return Path(str(dest) + ".done")


def part_path(dest: Path) -> Path:
    return Path(str(dest) + ".part")


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _expected(md5: Optional[str], sha256: Optional[str]):
    if md5 and sha256:
        raise ValueError("give either md5 or sha256, not both")
    if md5:
        return "md5", md5.lower()
    if sha256:
        return "sha256", sha256.lower()
    return None, None


def verify_file(
    path: Path,
    md5: Optional[str] = None,
    sha256: Optional[str] = None,
    size: Optional[int] = None,
) -> str:
    """Check size/checksum of ``path``; return the hex digest (md5 if no
    checksum was requested). Raises :class:`ChecksumError` on mismatch."""
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(
            f"{path}: size {actual_size} bytes, expected {size} bytes"
        )
    algo, want = _expected(md5, sha256)
    digest = file_digest(path, algo or "md5")
    if want is not None and digest != want:
        raise ChecksumError(f"{path}: {algo} {digest}, expected {want}")
    return digest


def _total_from_headers(resp, offset: int) -> Optional[int]:
    cr = resp.headers.get("Content-Range")
    if cr and "/" in cr:
        total = cr.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    cl = resp.headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + (offset if resp.status == 206 else 0)
    return None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> Optional[int]:
    """One HTTP attempt appending to ``part``; returns the total size if the
    server announced it."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Requested range beyond the end: the partial file is complete
            # (or longer than the remote one -- the size check will tell).
            cr = e.headers.get("Content-Range") if e.headers else None
            if cr and "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
                return int(cr.rsplit("/", 1)[1])
            return None
        raise
    with resp:
        if offset and resp.status != 206:
            logger.warning(
                "%s: server ignored the Range request; restarting from 0", url
            )
            offset = 0
            mode = "wb"
        else:
            mode = "ab" if offset else "wb"
        total = _total_from_headers(resp, offset)
        done = offset
        last = time.time()
        with open(part, mode) as f:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                done += len(block)
                if progress and time.time() - last > 10:
                    last = time.time()
                    pct = f" ({100.0 * done / total:.1f}%)" if total else ""
                    logger.info("%s: %d bytes%s", part.name, done, pct)
        if total is not None and done < total:
            raise DownloadError(
                f"{url}: connection closed after {done} of {total} bytes"
            )
        return total


def download(
    url: str,
    dest,
    md5: Optional[str] = None,
    sha256: Optional[str] = None,
    size: Optional[int] = None,
    retries: int = 3,
    timeout: float = 60.0,
    retry_wait: float = 5.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` resumably and verify it.

    Returns ``dest``. Skips the transfer if ``dest`` and its ``.done`` marker
    exist. If ``dest`` exists without a marker (e.g. a file the user copied
    there) it is verified and adopted.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    marker = marker_path(dest)
    part = part_path(dest)
    if dest.exists() and marker.exists():
        logger.info("%s already downloaded (marker %s); skipping", dest, marker.name)
        return dest
    if dest.exists():
        logger.info("%s exists without marker; verifying it", dest)
        digest = verify_file(dest, md5, sha256, size)
        marker.write_text(digest + "\n")
        return dest

    last_err: Optional[BaseException] = None
    total = None
    for attempt in range(1, retries + 1):
        try:
            total = _fetch_once(url, part, timeout, progress)
            last_err = None
            break
        except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code in (401, 403, 404):
                last_err = e
                break
            last_err = e
            have = part.stat().st_size if part.exists() else 0
            logger.warning(
                "download of %s failed (attempt %d/%d, %d bytes kept in %s): %s",
                url, attempt, retries, have, part, e,
            )
            if attempt < retries:
                time.sleep(retry_wait)
    if last_err is not None:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"failed to download {url} -> {dest}: {last_err}. "
            f"{have} bytes are kept in {part}; re-run to resume."
        ) from last_err

    want_size = size if size is not None else total
    try:
        digest = verify_file(part, md5, sha256, want_size)
    except ChecksumError as e:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"verification of {url} failed: {e}. The corrupt partial file was "
            f"removed; re-run to download it again."
        ) from e
    os.replace(part, dest)
    marker.write_text(digest + "\n")
    logger.info("downloaded %s (%s)", dest, digest)
    return dest


def _safe_members_zip(zf: zipfile.ZipFile, target: Path):
    root = target.resolve()
    for name in zf.namelist():
        p = (target / name).resolve()
        if root != p and root not in p.parents:
            raise DownloadError(f"refusing to extract {name!r} outside {target}")


def extract(archive, target_dir, marker_name: Optional[str] = None) -> Path:
    """Extract a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive into
    ``target_dir`` once; a marker ``.<archive name>.extracted`` in
    ``target_dir`` makes re-runs skip it. Members escaping ``target_dir`` are
    refused."""
    archive = Path(archive)
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    marker = target_dir / (marker_name or f".{archive.name}.extracted")
    if marker.exists():
        logger.info("%s already extracted into %s; skipping", archive, target_dir)
        return target_dir
    if not archive.exists():
        raise FileNotFoundError(f"archive not found: {archive}")
    logger.info("extracting %s into %s", archive, target_dir)
    name = archive.name
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _safe_members_zip(zf, target_dir)
                zf.extractall(target_dir)
        else:
            with tarfile.open(archive) as tf:
                try:
                    tf.extractall(target_dir, filter="data")
                except TypeError:  # Python without extraction filters
                    root = target_dir.resolve()
                    for m in tf.getmembers():
                        p = (target_dir / m.name).resolve()
                        if root != p and root not in p.parents:
                            raise DownloadError(
                                f"refusing to extract {m.name!r} outside {target_dir}"
                            )
                    tf.extractall(target_dir)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(
            f"cannot extract {archive}: {e} (truncated or corrupt archive? "
            f"delete it and its .done marker, then re-run)"
        ) from e
    marker.write_text(str(archive) + "\n")
    return target_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("dest")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--md5")
    g.add_argument("--sha256")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--extract_to", default=None,
                   help="extract the archive into this directory afterwards")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        dest = download(a.url, a.dest, md5=a.md5, sha256=a.sha256, size=a.size,
                        retries=a.retries, timeout=a.timeout)
        if a.extract_to:
            extract(dest, a.extract_to)
    except (DownloadError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
