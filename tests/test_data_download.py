"""Downloading releases from a real HTTP server on 127.0.0.1, serving archives built on the fly.

After every failure the cache holds nothing half-written: no extracted folder, no temporary
folder, no archive that failed its checksum; only a ``.part`` that is a genuine prefix of
the archive (an interrupted transfer), kept so the next attempt resumes it.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mtrec.data import download_release, load_movielens
from mtrec.errors import DownloadError

ML100K_FILES = ("u.data", "u.item", "u.genre", "u1.base", "u1.test")


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes); honours Range unless ``ranges`` is off; can cut transfers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ArchiveHandler)
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/movielens"


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        body = self.server.files.get(self.path.removeprefix("/movielens/"))
        requested = self.headers.get("Range")
        if body is None:
            self.server.requests.append((self.path, requested, 404))
            self.send_error(404)
            return
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested and self.server.ranges else 0
        status = 206 if start else 200
        self.server.requests.append((self.path, requested, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if self.server.cut_after is not None:
            payload = payload[: self.server.cut_after]
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr("mtrec.data.download.TIMEOUT", 5.0)
    httpd = ArchiveServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def build_zip(path: Path, files: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    return path.read_bytes()


@pytest.fixture(scope="module")
def ml100k_zip(tmp_path_factory, data_dir) -> bytes:
    files = {f"ml-100k/{name}": (data_dir / "ml-100k" / name).read_bytes() for name in ML100K_FILES}
    return build_zip(tmp_path_factory.mktemp("zip") / "ml-100k.zip", files)


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def cache_listing(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_download_verify_extract_and_load(server, ml100k_zip, tmp_path):
    server.files["ml-100k.zip"] = ml100k_zip
    cache = tmp_path / "cache"
    folder = download_release("100k", cache, progress=True, base_url=server.url, md5=md5(ml100k_zip))
    assert folder == cache / "ml-100k"
    assert set(cache_listing(cache)) == {"ml-100k", "ml-100k.zip", *(f"ml-100k/{n}" for n in ML100K_FILES)}
    data = load_movielens("100k", data_dir=cache)
    assert (data.num_users, data.num_items, len(data)) == (943, 1682, 100_000)
    assert download_release("100k", cache, base_url=server.url) == folder
    assert len(server.requests) == 1  # present now: nothing fetched again


def test_md5_mismatch_deletes_the_archive(server, ml100k_zip, tmp_path):
    server.files["ml-100k.zip"] = ml100k_zip
    cache = tmp_path / "cache"
    # The archive built here is not GroupLens's: the pinned MD5 rejects it.
    with pytest.raises(
        DownloadError,
        match=rf"ml-100k\.zip: the archive has MD5 {md5(ml100k_zip)}, "
        r"expected 0e33842e24a9c977be4e0107933c0723; it was deleted",
    ):
        download_release("100k", cache, base_url=server.url)
    assert cache_listing(cache) == []


def test_archive_is_verified_before_it_is_renamed_into_place(server, ml100k_zip, tmp_path, monkeypatch):
    server.files["ml-100k.zip"] = ml100k_zip
    renamed = []
    real_replace = os.replace

    def replace(source, target):
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DownloadError, match="it was deleted"):
        download_release("100k", tmp_path / "bad", base_url=server.url, md5="0" * 32)
    assert renamed == [] and cache_listing(tmp_path / "bad") == []
    download_release("100k", tmp_path / "good", base_url=server.url, md5=md5(ml100k_zip))
    assert renamed[0] == "ml-100k.zip"


def test_resumed_part_that_fails_its_checksum_is_deleted(server, ml100k_zip, tmp_path):
    server.files["ml-100k.zip"] = ml100k_zip
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-100k.zip.part").write_bytes(b"not the archive's first bytes")
    with pytest.raises(DownloadError, match=r"the archive has MD5 [0-9a-f]{32}, expected .*; it was deleted"):
        download_release("100k", cache, base_url=server.url, md5=md5(ml100k_zip))
    assert server.requests[-1][1:] == ("bytes=29-", 206)
    assert cache_listing(cache) == []


def test_staging_folders_of_a_killed_extraction_are_removed(ml100k_zip, tmp_path):
    cache = tmp_path / "cache"
    (cache / ".ml-100k.k1ll3d.tmp" / "ml-100k").mkdir(parents=True)
    (cache / ".ml-100k.k1ll3d.tmp" / "ml-100k" / "u.data").write_bytes(b"196\t242")
    (cache / ".ml-1m.other.tmp").mkdir()
    (cache / "ml-100k.zip").write_bytes(ml100k_zip)
    download_release("100k", cache, base_url="http://127.0.0.1:9/unreachable", md5=md5(ml100k_zip))
    listing = cache_listing(cache)
    assert "ml-100k/u.data" in listing and not any(path.startswith(".ml-100k.") for path in listing)
    assert ".ml-1m.other.tmp" in listing  # another release's staging is not this extraction's to remove


def test_truncated_archive_is_deleted(server, ml100k_zip, tmp_path):
    truncated = ml100k_zip[: len(ml100k_zip) // 2]
    server.files["ml-100k.zip"] = truncated
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"ml-100k\.zip is not a valid zip archive .*; it was deleted"):
        download_release("100k", cache, base_url=server.url, md5=md5(truncated))
    assert cache_listing(cache) == []


def test_corrupt_member_is_caught_by_its_crc(server, ml100k_zip, tmp_path):
    corrupt = bytearray(ml100k_zip)
    corrupt[len(corrupt) // 3] ^= 0xFF
    server.files["ml-100k.zip"] = bytes(corrupt)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        download_release("100k", cache, base_url=server.url, md5=md5(bytes(corrupt)))
    assert cache_listing(cache) == []


def test_no_server_says_which_file_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml"
    cache = tmp_path / "cache"
    monkeypatch.setenv("MTREC_MOVIELENS_BASE_URL", url)
    with pytest.raises(DownloadError) as error:
        load_movielens("100k", data_dir=cache)
    message = str(error.value)
    assert f"cannot download {url}/ml-100k.zip" in message and "refused" in message
    assert f"place {url}/ml-100k.zip at {cache / 'ml-100k.zip'}" in message
    assert cache_listing(cache) == []


def test_archive_placed_by_hand_is_used_offline(ml100k_zip, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-100k.zip").write_bytes(ml100k_zip)
    folder = download_release("100k", cache, base_url="http://127.0.0.1:9/unreachable", md5=md5(ml100k_zip))
    assert (folder / "u.data").is_file()


def test_interrupted_download_keeps_a_prefix_and_resumes(server, ml100k_zip, tmp_path):
    server.files["ml-100k.zip"] = ml100k_zip
    server.cut_after = 300_000
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"interrupted after 300000 of \d+ bytes; run again to resume"):
        download_release("100k", cache, base_url=server.url, md5=md5(ml100k_zip))
    assert cache_listing(cache) == ["ml-100k.zip.part"]
    assert ml100k_zip.startswith((cache / "ml-100k.zip.part").read_bytes())
    server.cut_after = None
    download_release("100k", cache, base_url=server.url, md5=md5(ml100k_zip))
    assert server.requests[-1][1:] == ("bytes=300000-", 206)
    assert (cache / "ml-100k.zip").read_bytes() == ml100k_zip
    assert "ml-100k.zip.part" not in cache_listing(cache)


def test_resume_restarts_when_the_server_ignores_ranges(server, ml100k_zip, tmp_path):
    server.files["ml-100k.zip"] = ml100k_zip
    server.ranges = False
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-100k.zip.part").write_bytes(ml100k_zip[:5000])
    download_release("100k", cache, base_url=server.url, md5=md5(ml100k_zip))
    assert server.requests[-1][1:] == ("bytes=5000-", 200)
    assert (cache / "ml-100k.zip").read_bytes() == ml100k_zip


def synthetic_release(folder: str, ratings_name: str) -> tuple[dict[str, bytes], np.ndarray]:
    """A small release laid out like GroupLens's: ratings plus movies with awkward titles."""
    rng = np.random.default_rng(0)
    pairs = rng.choice(50 * 30, size=300, replace=False)
    users, items = pairs // 30 + 1, pairs % 30 + 1
    ratings = rng.integers(1, 6, size=300) if folder == "ml-1m" else rng.integers(1, 11, size=300) / 2
    titles = [f"Movie {i}, The ({1990 + i})" for i in range(1, 31)]
    if ratings_name.endswith(".csv"):
        rows = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r:g},{t}" for u, i, r, t in zip(users, items, ratings, range(300))]
        movies = "movieId,title,genres\n" + "".join(f'{i},"{t}",Drama|Comedy\n' for i, t in enumerate(titles, 1))
        names = ("ratings.csv", "movies.csv")
    else:
        rows = [f"{u}::{i}::{r:g}::{t}" for u, i, r, t in zip(users, items, ratings, range(300))]
        movies = "".join(f"{i}::{t}::Drama|Comedy\n" for i, t in enumerate(titles, 1)).replace("Movie 1,", "Amélie,")
        names = ("ratings.dat", "movies.dat")
    encoding = "latin-1" if folder == "ml-1m" else "utf-8"
    files = {f"{folder}/{names[0]}": ("\n".join(rows) + "\n").encode(), f"{folder}/{names[1]}": movies.encode(encoding)}
    return files, np.column_stack([users, items, ratings])


@pytest.mark.parametrize(
    "name, archive, folder, ratings_name",
    [
        ("1m", "ml-1m.zip", "ml-1m", "ratings.dat"),
        ("10m", "ml-10m.zip", "ml-10M100K", "ratings.dat"),
        ("latest-small", "ml-latest-small.zip", "ml-latest-small", "ratings.csv"),
    ],
)
def test_other_releases_use_the_published_md5(server, tmp_path, monkeypatch, name, archive, folder, ratings_name):
    files, expected = synthetic_release(folder, ratings_name)
    content = build_zip(tmp_path / archive, files)
    server.files[archive] = content
    server.files[f"{archive}.md5"] = f"MD5 ({archive}) = {md5(content)}\n".encode()
    monkeypatch.setenv("MTREC_MOVIELENS_BASE_URL", server.url)
    cache = tmp_path / "cache"
    data = load_movielens(name, data_dir=cache)
    assert [request[0] for request in server.requests] == [f"/movielens/{archive}.md5", f"/movielens/{archive}"]
    assert cache_listing(cache)[0] == folder and not any(".part" in p or ".tmp" in p for p in cache_listing(cache))
    assert len(data) == 300 and data.user_ids[data.users[0]] == expected[0, 0]
    np.testing.assert_array_equal(data.ratings, expected[:, 2])
    assert data.rating_scale == ((1.0, 5.0) if name == "1m" else (0.5, 5.0))
    meta = data.item_metadata
    first = "Amélie, The (1991)" if ratings_name.endswith(".dat") else "Movie 1, The (1991)"
    assert meta.titles[0] == first and meta.years[0] == 1991 and meta.genres[0] == ["Drama", "Comedy"]


def test_published_md5_mismatch(server, tmp_path, monkeypatch):
    files, _ = synthetic_release("ml-1m", "ratings.dat")
    server.files["ml-1m.zip"] = build_zip(tmp_path / "ml-1m.zip", files)
    server.files["ml-1m.zip.md5"] = b"0123456789abcdef0123456789abcdef  ml-1m.zip\n"
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="expected 0123456789abcdef0123456789abcdef; it was deleted"):
        download_release("1m", cache, base_url=server.url)
    assert cache_listing(cache) == []


def test_missing_published_md5(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"cannot fetch the checksum .*/ml-1m\.zip\.md5: HTTP 404"):
        download_release("1m", cache, base_url=server.url)
    assert cache_listing(cache) == []
