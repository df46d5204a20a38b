"""`stguide download` against a local HTTP server on 127.0.0.1 serving ../shared/realdata (no external network)."""
import hashlib
import io
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stguide.cli import main
from stguide.download import download, safe_extract
from stguide.errors import InputError

HER2ST_FILES = ["ST-cnts/B1.tsv.gz", "ST-spotfiles/B1_selection.tsv", "ST-pat/lbl/B1_labeled_coordinates.tsv"]


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves a folder, honours 'Range: bytes=N-', and serves extra in-memory files (manifests)."""

    extra: dict = {}
    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.extra.get(self.path)
        if body is None:
            f = Path(self.translate_path(self.path))
            if not f.is_file():
                self.send_error(404)
                return
            body = f.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.ranges.append((self.path, start))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])


@pytest.fixture()
def server(realdata):
    RangeHandler.extra, RangeHandler.ranges = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(realdata)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", RangeHandler
    httpd.shutdown()


def _sums(root: Path, files) -> str:
    return "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files)


def test_her2st_download_verified(server, realdata, tmp_path):
    url, handler = server
    handler.extra["/her2st/SHA256SUMS"] = _sums(realdata / "her2st", HER2ST_FILES).encode()
    assert main(["download", "her2st", "--base-url", f"{url}/her2st", "--out", str(tmp_path / "h")]) == 0
    for f in HER2ST_FILES:
        assert (tmp_path / "h" / f).read_bytes() == (realdata / "her2st" / f).read_bytes()
    from stguide.data import read_her2st

    assert int(read_her2st(tmp_path / "h", progress=False).obs["label"].notna().sum()) == 295


def test_hest_ids(server, realdata, tmp_path):
    url, handler = server
    files = ["st/SPA145.h5ad", "wsis/SPA145.tif", "metadata/SPA145.json"]
    handler.extra["/hest/SHA256SUMS"] = _sums(realdata / "hest", files).encode()
    got = download("hest", tmp_path / "x", ids=["SPA145"], base_url=f"{url}/hest", progress=False)
    assert sorted(p.relative_to(tmp_path / "x").as_posix() for p in got) == sorted(files)


def test_partial_download_resumes(server, realdata, tmp_path):
    url, handler = server
    f = "ST-cnts/B1.tsv.gz"
    data = (realdata / "her2st" / f).read_bytes()
    handler.extra["/her2st/SHA256SUMS"] = _sums(realdata / "her2st", [f]).encode()
    part = tmp_path / "h" / "ST-cnts" / "B1.tsv.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])
    download("her2st", tmp_path / "h", base_url=f"{url}/her2st", progress=False)
    assert (tmp_path / "h" / f).read_bytes() == data and not part.exists()
    assert handler.ranges == [("/her2st/" + f, len(data) // 2)]


def test_checksum_mismatch_leaves_nothing(server, realdata, tmp_path):
    url, handler = server
    handler.extra["/her2st/SHA256SUMS"] = f"{'0' * 64}  ST-cnts/B1.tsv.gz\n".encode()
    with pytest.raises(InputError, match="sha256 mismatch"):
        download("her2st", tmp_path / "h", base_url=f"{url}/her2st", progress=False)
    assert not any(p.is_file() for p in (tmp_path / "h").rglob("*"))


def _tar(path: Path, members):
    with tarfile.open(path, "w:gz") as t:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, link
                t.addfile(info)
            else:
                info.size = 2
                t.addfile(info, io.BytesIO(b"ok"))


@pytest.mark.parametrize("members", [
    [("good.txt", "file", ""), ("../evil.txt", "file", "")],
    [("/abs/evil.txt", "file", "")],
    [("link", "sym", "../../outside")],
    [("link", "sym", "/etc/passwd")],
])
def test_tar_extraction_refuses_escapes(tmp_path, members):
    arc = tmp_path / "a.tar.gz"
    _tar(arc, members)
    target = tmp_path / "out"
    with pytest.raises(InputError, match="unsafe member"):
        safe_extract(arc, target)
    assert not (tmp_path / "evil.txt").exists() and not any(target.iterdir())


def test_zip_extraction(tmp_path):
    ok = tmp_path / "ok.zip"
    with zipfile.ZipFile(ok, "w") as z:
        z.writestr("d/a.txt", "a")
    assert safe_extract(ok, tmp_path / "o") == ["d/a.txt"] and (tmp_path / "o" / "d" / "a.txt").read_text() == "a"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../../evil.txt", "x")
    with pytest.raises(InputError, match="leaves the target folder"):
        safe_extract(bad, tmp_path / "o2")
    assert not (tmp_path / "evil.txt").exists()
