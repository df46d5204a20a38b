"""Downloads of public releases: resumable, verified against a sha256 manifest, extracted safely.

A *manifest* is sha256sum text (``<sha256>  <relative path>`` per line). By default it is fetched from
``<base_url>/SHA256SUMS``; ``manifest=`` gives another file or URL. Every file is downloaded to ``<path>.part``
(resumed with an HTTP Range request when a partial file exists), checked against its sha256, and only then renamed
into place. Archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) are extracted after verification; a member with an
absolute path, a ``..`` component, or a link that leaves the target folder stops the extraction before anything is
written.

Sources: ``her2st`` (every file the manifest lists) and ``hest`` (``st/{id}.h5ad``, ``wsis/{id}.tif``,
``metadata/{id}.json`` for the requested ids). The default base URLs are the public hosts of the releases; they could
not be reached from the environment this package was built in, so ``base_url``/``manifest`` let users point at any
mirror. ``HF_TOKEN`` is sent to the Hugging Face hub (HEST-1k is gated).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path, PurePosixPath

from stguide.errors import InputError

DEFAULT_BASE_URLS = {
    "her2st": "https://zenodo.org/records/4751624/files",
    "hest": "https://huggingface.co/datasets/MahmoodLab/hest/resolve/main",
}
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")
CHUNK = 1 << 20


def _request(url: str, start: int = 0) -> urllib.request.Request:
    req = urllib.request.Request(url, headers={"User-Agent": "stguide"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    token = os.environ.get("HF_TOKEN")
    if token and "huggingface.co" in url:
        req.add_header("Authorization", f"Bearer {token}")
    return req


def _open(url: str, start: int = 0):
    try:
        return urllib.request.urlopen(_request(url, start), timeout=60)
    except urllib.error.HTTPError as e:
        raise InputError(url, f"the server answered HTTP {e.code} ({e.reason})",
                         "check the base URL and ids; for gated data (HEST-1k) set HF_TOKEN") from None
    except (urllib.error.URLError, OSError) as e:
        raise InputError(url, f"cannot be reached ({e})", "check the network, or pass --base-url for a mirror") from None


def parse_manifest(text: str, source: str) -> dict[str, str]:
    """{relative path: sha256} from sha256sum text."""
    out = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise InputError(source, f"line {i} is not '<sha256>  <path>'", "use sha256sum output as the manifest")
        out[parts[1].strip().lstrip("*")] = parts[0].lower()
    return out


def load_manifest(manifest: str | PathLike) -> dict[str, str]:
    m = str(manifest)
    if m.startswith(("http://", "https://")):
        with _open(m) as r:
            return parse_manifest(r.read().decode(), m)
    if not Path(m).is_file():
        raise InputError(m, "manifest file not found", "give a sha256sum file or URL")
    return parse_manifest(Path(m).read_text(), m)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, expected: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify its sha256, then rename it into place."""
    if dest.is_file() and sha256(dest) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    with _open(url, start) as r:
        resumed = start > 0 and r.status == 206  # a server that ignores Range answers 200: start over
        with part.open("ab" if resumed else "wb") as f:
            from stguide.progress import track

            def chunks():
                while chunk := r.read(CHUNK):
                    yield chunk

            for chunk in track(chunks(), f"{dest.name}", enabled=progress, total=None):
                f.write(chunk)
    got = sha256(part)
    if got != expected:
        part.unlink()
        raise InputError(url, f"sha256 mismatch (expected {expected[:12]}…, got {got[:12]}…); the partial file was removed",
                         "run the download again; if it fails again the release or the manifest changed")
    os.replace(part, dest)
    return dest


def _inside(target: Path, name: str) -> bool:
    """Whether archive member ``name`` stays inside ``target`` (no absolute path, drive, or ``..``)."""
    name = name.replace("\\", "/")
    if name in ("", ".", "./"):
        return True
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or ":" in p.parts[0]:
        return False
    return (target / p).resolve().is_relative_to(target.resolve())


def safe_extract(archive: Path, target: Path) -> list[str]:
    """Extract ``archive`` into ``target`` after checking every member; raises before writing anything unsafe."""
    target.mkdir(parents=True, exist_ok=True)
    bad = lambda member, why: InputError(archive, f"unsafe member {member!r}: {why}; nothing was extracted",  # noqa: E731
                                         "do not use this archive; download it again from the original source")
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not _inside(target, info.filename):
                    raise bad(info.filename, "its path leaves the target folder")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise bad(info.filename, "it is a symbolic link")
            z.extractall(target)
            return z.namelist()
    with tarfile.open(archive) as t:
        members = t.getmembers()
        for m in members:
            if not _inside(target, m.name):
                raise bad(m.name, "its path leaves the target folder")
            if m.issym() or m.islnk():
                link = m.linkname if m.islnk() else str(PurePosixPath(m.name).parent / m.linkname)
                if PurePosixPath(m.linkname).is_absolute() or not _inside(target, link):
                    raise bad(m.name, f"it links outside the target folder ({m.linkname})")
            elif not (m.isfile() or m.isdir()):
                raise bad(m.name, "it is a device or special file")
        t.extractall(target, filter="data")
        return [m.name for m in members]


def files_for(source: str, manifest: dict[str, str], ids: Sequence[str] | None) -> list[str]:
    if source == "her2st":
        return sorted(manifest)
    if source == "hest":
        if not ids:
            raise InputError("config:download.ids", "no HEST ids were given", "pass --ids, e.g. --ids SPA145 SPA141")
        return [p for i in ids for p in (f"st/{i}.h5ad", f"wsis/{i}.tif", f"metadata/{i}.json")]
    raise InputError("config:download.source", f"unknown source {source!r}", f"use one of {sorted(DEFAULT_BASE_URLS)}")


def download(source: str, out: str | PathLike, ids: Sequence[str] | None = None, base_url: str | None = None,
             manifest: str | PathLike | None = None, progress: bool = True) -> list[Path]:
    """Download (and extract) a release into ``out``; returns the files written. See the module docstring."""
    if source not in DEFAULT_BASE_URLS:
        raise InputError("config:download.source", f"unknown source {source!r}", f"use one of {sorted(DEFAULT_BASE_URLS)}")
    base = (base_url or DEFAULT_BASE_URLS[source]).rstrip("/")
    sums = load_manifest(manifest or f"{base}/SHA256SUMS")
    out = Path(out)
    written = []
    for rel in files_for(source, sums, ids):
        if rel not in sums:
            raise InputError(manifest or f"{base}/SHA256SUMS", f"{rel} is not in the manifest, so it cannot be verified",
                             "use a manifest that lists every file you download")
        if not _inside(out, rel):
            raise InputError(manifest or f"{base}/SHA256SUMS", f"the path {rel!r} leaves the output folder", "use a trusted manifest")
        dest = fetch(f"{base}/{rel}", out / rel, sums[rel], progress)
        written.append(dest)
        if dest.name.endswith(ARCHIVES):
            safe_extract(dest, dest.parent)
    return written
