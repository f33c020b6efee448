"""The run folder: config.json, metrics.jsonl, weights (safetensors) and the resumable checkpoint.

Everything a later command needs lives here, so `eval`, `sample` and `--resume` never repeat a flag.
Files are written atomically (temporary file, flush, fsync, rename); nothing is ever loaded through pickle.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG = "config.json"
METRICS = "metrics.jsonl"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
STATE = "checkpoint.json"


_UMASK = os.umask(0o22)
os.umask(_UMASK)


class RunError(Exception):
    """A run folder that is missing, unreadable or of another format; the message is one line for users."""


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then fsync and rename over `path`, so readers see the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the mode open() would
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_npz(path: Path, arrays: dict) -> None:
    """numpy arrays in one .npz (no pickled objects: load it with allow_pickle=False)."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    _atomic_write(path, write)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: unreadable JSON ({e})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RunError(f"{path}: not a valid safetensors file ({e})") from None


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


def read_config(run_dir: Path) -> dict:
    cfg = read_json(Path(run_dir) / CONFIG)
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if version != FORMAT_VERSION:
        raise RunError(f"{run_dir}: run folder format version {version!r}, this aevb reads version {FORMAT_VERSION}")
    return cfg


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, max_samples: int) -> None:
    """Keep only the records up to `max_samples` (those a resumed run will not write again)."""
    keep = [r for r in read_metrics(run_dir) if r["samples_seen"] <= max_samples]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    _atomic_write(Path(run_dir) / METRICS, lambda tmp: Path(tmp).write_text(text))


def load_run(path, *, device: str | torch.device = "cpu"):
    """Rebuild a trained model from its run folder.

    Args:
        path: the run folder written by `aevb train`.
        device: where to put the model.

    Returns:
        (model, config): the VAE in eval mode with its weights loaded, and the run's config dict
        (keys `model`, `train`, `data`, ...).
    """
    from .model import VAE, ModelConfig

    cfg = read_config(Path(path))
    model = VAE(ModelConfig.from_dict(cfg["model"]))
    state = read_tensors(Path(path) / WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), cfg
