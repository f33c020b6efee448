"""The run folder: config.json, metrics.jsonl, weights (safetensors) and the resumable checkpoint.

Everything a later command needs lives here, so `eval`, `sample` and `--resume` never repeat a flag. This module
reads and writes the files; `aevb.load.load_run` turns a folder back into a model.
Files are written atomically (temporary file, flush, fsync, rename, fsync of the folder), so a kill at any moment
leaves the old file or the new one; metrics.jsonl is appended line by line and a torn last line is ignored.
The checkpoint is one file: tensors plus the training state as JSON in the safetensors header. Nothing is ever
loaded through pickle. A process that trains into a folder holds `training_lock` on it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

FORMAT_VERSION = 1
CONFIG = "config.json"
METRICS = "metrics.jsonl"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
SPLIT = "split.safetensors"  # `test_indices` of a --data source split by --test-fraction
STATE = "checkpoint.json"  # the training state of format 1 checkpoints (read only; now in CHECKPOINT's header)
STATE_KEY = "aevb.state"  # safetensors header metadata key holding the training state as JSON
TEMP_SUFFIX = ".tmp"


class RunError(Exception):
    """A run folder that is missing, unreadable or of another format; the message is one line for users."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (no-op where the file system cannot fsync folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, rename over `path` and fsync the folder: readers see the old file or the new.

    Raises:
        RunError: the folder cannot be written (permissions, disk full, ...); no temporary file is left.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            Path(tmp).unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _flat(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_lines(path: Path, lines) -> None:
    """Write an iterable of text lines (each without its newline) atomically, as they come: the whole text is
    never held in memory."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
    _atomic_write(path, write)


def write_npz(path: Path, arrays: dict) -> None:
    """numpy arrays in one .npz (no pickled objects: load it with allow_pickle=False)."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    _atomic_write(path, write)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    data = save_bytes(_flat(tensors), metadata=metadata)
    write_bytes(path, data)


def clean_temporaries(run_dir: Path) -> list[str]:
    """Remove the temporary files a killed writer left in the run folder; returns their names."""
    removed = []
    for p in Path(run_dir).glob(f".*{TEMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    (Path(run_dir) / ".write-test").unlink(missing_ok=True)
    return removed


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: unreadable JSON ({_short(e)})") from None


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from None


def parse_tensors(data: bytes, name) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of safetensors bytes; anything else (a pickle, a torn file) is refused.

    Raises:
        RunError: `data` is not a complete safetensors file.
    """
    try:
        tensors = load_bytes(data)
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        metadata = header.get("__metadata__") or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        if data[:1] == b"\x80" or data[:2] == b"PK":
            raise RunError(f"{name}: not a safetensors file but a pickle or a torch.save archive, which aevb never "
                           "loads") from None
        raise RunError(f"{name}: not a valid safetensors file ({_short(e)})") from None
    return tensors, metadata


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return parse_tensors(read_file(path), path)[0]


def prepare_run_dir(path: Path, *, resume: bool = False) -> Path:
    """Create the run folder (or check it for --resume); refuse to overwrite a finished run."""
    path = Path(path)
    if not resume and (path / CONFIG).exists():
        raise RunError(f"{path} already holds a run; use --resume {path} to continue it or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to the output folder {path}: {e.strerror or e}") from None
    return path


@contextlib.contextmanager
def training_lock(path: Path):
    """Hold an exclusive lock on the run folder `path` while training into it: a second process that tries (a
    `--resume` of a run still training, a sweep started twice) gets a RunError instead of writing the same files
    at the same time. The lock is the operating system's advisory lock on the folder itself (flock), so no file is
    left behind and it ends with its process however that ends (SIGKILL included). Where there is no flock (Windows)
    or the file system refuses it (some network file systems), there is no lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(f"{path} is being trained by another process; wait for it to end or stop it, then "
                               f"continue with --resume {path}") from None
            # no locks on this file system: train without one
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_unstarted(path: Path) -> bool:
    """Remove a run folder that holds nothing but its config.json and, for your own data split by a fraction, its
    split.safetensors (a run that failed before its first checkpoint or evaluation); leave any other folder alone.
    Returns whether it removed it."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if CONFIG not in names or not names <= {CONFIG, SPLIT}:
        return False
    for name in names:
        (path / name).unlink()
    path.rmdir()
    return True


def read_config(run_dir: Path) -> dict:
    return parse_config(read_file(Path(run_dir) / CONFIG), run_dir)


def parse_config(data: bytes, run_dir) -> dict:
    """config.json's content, checked for this format version and the sections later commands read."""
    try:
        cfg = json.loads(data)
    except ValueError as e:
        raise RunError(f"{Path(run_dir) / CONFIG}: unreadable JSON ({_short(e)})") from None
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if version != FORMAT_VERSION:
        raise RunError(f"{run_dir}: run folder format version {version!r}, this aevb reads version {FORMAT_VERSION}")
    for key in ("data", "model", "train"):
        if not isinstance(cfg.get(key), dict):
            raise RunError(f"{Path(run_dir) / CONFIG}: no {key!r} section")
    return cfg


def append_metrics(run_dir: Path, record: dict) -> None:
    path = Path(run_dir) / METRICS
    new = not path.exists()
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None
    if new:
        fsync_dir(path.parent)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl. A last line without its newline (a write cut by a kill) is left out.

    Raises:
        RunError: a complete line is not a JSON object.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    text = read_file(path).decode("utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines[:-1], 1):  # lines[-1] is "" or a torn last line
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            raise RunError(f"{path}: line {i} is not a JSON object")
        records.append(rec)
    return records


def truncate_metrics(run_dir: Path, keep: int | None = None, *, max_samples: int | None = None) -> list[dict]:
    """Keep the first `keep` records (or those with samples_seen <= max_samples): those a resumed run will not
    write again. Rewrites the file atomically and returns the records kept."""
    records = read_metrics(run_dir)
    kept = records[:keep] if keep is not None else [r for r in records if r.get("samples_seen", 0) <= max_samples]
    path = Path(run_dir) / METRICS
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if path.exists() and path.read_text() != text:
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return kept
