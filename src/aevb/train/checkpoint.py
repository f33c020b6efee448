"""Checkpoints and exact resume: the whole training state in one safetensors file, written atomically.

The checkpoint holds everything the continuation depends on (weights, optimizer, weight average, every random
stream, data order, counters, the evaluation schedule), so a run resumed after a kill at any moment ends
bit-identical to an uninterrupted one. Under torchrun every rank takes part and rank 0 writes. Each function takes
the `Trainer` whose state it saves or restores.
"""
from __future__ import annotations

import json
import math
import time

import torch

from .. import distributed, runs


def gather_streams(trainer) -> dict[str, torch.Tensor]:
    """Every shard's random streams, on rank 0 (the other ranks get {})."""
    mine = trainer.streams.state()
    if trainer.world.size == 1:
        return mine
    kinds = [k.rsplit(".", 1)[0] for k in mine if k.endswith(f".{trainer.local_shards[0]}")]
    order = [(i, kind) for i in range(len(trainer.local_shards)) for kind in kinds]  # the same on every rank
    parts = [mine[f"{kind}.{trainer.local_shards[i]}"].contiguous().view(torch.uint8).flatten() for i, kind in order]
    gathered = distributed.gather_to_main(torch.cat(parts), trainer.world)
    out = {}
    for rank, blob in enumerate(gathered or []):
        offset = 0
        for (i, kind), part in zip(order, parts):
            out[f"{kind}.{rank + i * trainer.world.size}"] = blob[offset:offset + part.numel()].clone()
            offset += part.numel()
    return out


def save(trainer) -> None:
    """Write the weights and the full training state atomically (safetensors with a JSON header, no pickle).

    The whole state is one file, so a kill at any moment leaves the previous checkpoint or this one. A state
    whose weights are not finite is never written. Under torchrun every rank takes part; rank 0 writes.
    """
    if trainer.run_dir is None:
        return
    streams = gather_streams(trainer)
    finite = all(bool(torch.isfinite(t).all()) for t in trainer.param_data + (trainer.ema or []))
    if not finite:
        raise FloatingPointError(f"training diverged: the weights are not finite at step {trainer.step}; the last "
                                 "checkpoint is intact")
    trainer.last_checkpoint = time.monotonic()
    trainer.checkpoint_step = trainer.step
    if not trainer.world.main:
        return
    tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    opt = trainer.optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "scalars": {}}
    for i, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{i}.{k}"] = v
            else:
                opt_meta["scalars"][f"{i}.{k}"] = v
    batch_tensors, batch_meta = trainer.batches.state()
    tensors.update(batch_tensors)
    tensors.update(streams)
    tensors["guard.norm_sum"] = trainer.norm_sum
    if trainer.ema is not None:
        tensors.update({f"ema.{i}": v for i, v in enumerate(trainer.ema)})
    meta = {"layout": 2, "step": trainer.step, "samples_seen": trainer.samples_seen, "seconds": trainer.seconds,
            "lr": trainer.lr, "optimizer": opt_meta, "batches": batch_meta, "shards": trainer.shards,
            "world_size": trainer.world.size, "evals": len(trainer.history), "next_point": trainer.point_index,
            "guard": {"skipped": trainer.skipped, "norm_steps": trainer.norm_steps}}
    with trainer.averaged():
        runs.write_tensors(trainer.run_dir / runs.WEIGHTS, trainer.model.state_dict())
    runs.write_tensors(trainer.run_dir / runs.CHECKPOINT, tensors, metadata={runs.STATE_KEY: json.dumps(meta)})
    (trainer.run_dir / runs.STATE).unlink(missing_ok=True)  # a format-1 state file would now be stale


def _read(trainer):
    """(tensors, meta) of the run folder's checkpoint, read by rank 0 and shared; None when there is none."""
    path = trainer.run_dir / runs.CHECKPOINT

    def read():
        if not path.exists():
            return None
        runs.clean_temporaries(trainer.run_dir)
        return runs.read_file(path)

    data = distributed.share_from_main(read, trainer.world, (runs.RunError,))
    if data is None:
        return None
    tensors, metadata = runs.parse_tensors(data, path)
    if runs.STATE_KEY in metadata:
        try:
            meta = json.loads(metadata[runs.STATE_KEY])
        except ValueError:
            raise runs.RunError(f"{path}: unreadable training state in the header") from None
    else:  # format-1 layout: the state in checkpoint.json, one shard's streams without a shard number
        meta = json.loads(distributed.share_from_main(lambda: runs.read_file(trainer.run_dir / runs.STATE),
                                                      trainer.world, (runs.RunError,)))
        for k in ("rng.torch", "rng.noise"):
            if k in tensors:
                tensors[f"{k}.0"] = tensors.pop(k)
    return tensors, meta


def restore(trainer) -> bool:
    """Load the state written by `checkpoint` (for --resume); False when the run has no checkpoint yet (it then
    starts from the beginning, which is what an uninterrupted run did).

    Raises:
        RunError: the checkpoint is not safetensors, is incomplete, or does not match the run's config.
    """
    found = _read(trainer)
    path = trainer.run_dir / runs.CHECKPOINT
    if found is None:
        if trainer.world.main:
            runs.truncate_metrics(trainer.run_dir, 0)
        return False
    tensors, meta = found
    try:
        _load_state(trainer, tensors, meta)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
        raise runs.RunError(f"{path}: does not match this run ({detail})") from None
    if trainer.world.main:
        if "evals" in meta:
            trainer.history = runs.truncate_metrics(trainer.run_dir, meta["evals"])
        else:
            trainer.history = runs.truncate_metrics(trainer.run_dir, max_samples=trainer.samples_seen)
    return True


def _check_state(trainer, tensors: dict, meta: dict) -> None:
    """Refuse a checkpoint whose counters or tensors could not have come from this run (tampered, foreign)."""
    def need(key, kind, ok=lambda v: True, where=meta):
        v = where[key]
        if not isinstance(v, kind) or isinstance(v, bool) or not ok(v):
            raise ValueError(f"{key} is {v!r}")

    number = (int, float)
    need("step", int, lambda v: v >= 0)
    need("samples_seen", int, lambda v: v >= 0)
    need("seconds", number, lambda v: math.isfinite(v) and v >= 0)
    need("lr", number, lambda v: math.isfinite(v) and v > 0)
    need("optimizer", dict)
    need("param_groups", list, where=meta["optimizer"])
    need("scalars", dict, where=meta["optimizer"])
    need("batches", dict)
    need("pos", int, lambda v: v >= 0, where=meta["batches"])
    for key in ("shards", "evals", "next_point"):
        if key in meta:
            need(key, int, lambda v: v >= 0)
    if meta.get("next_point", 0) > len(trainer.points):
        raise ValueError(f"next_point is {meta['next_point']}")
    for key in ("skipped", "norm_steps"):
        if key in meta.get("guard", {}):
            need(key, int, lambda v: v >= 0, where=meta["guard"])
    perm = tensors["data.perm"]
    if perm.dtype != torch.long or perm.ndim != 1 or meta["batches"]["pos"] > perm.numel() or (
            perm.numel() and not (0 <= int(perm.min()) and int(perm.max()) < trainer.n_train)):
        raise ValueError("data.perm is not an order of this training set")
    for i, p in enumerate(trainer.params):
        for key in (f"ema.{i}",) if trainer.ema is not None else ():
            if tensors[key].shape != p.shape:
                raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, the weights {tuple(p.shape)}")
        for key, t in tensors.items():
            if key.startswith(f"optim.{i}.") and t.ndim and t.shape != p.shape:
                raise ValueError(f"{key} has shape {tuple(t.shape)}, the weights {tuple(p.shape)}")


def _load_state(trainer, tensors: dict, meta: dict) -> None:
    _check_state(trainer, tensors, meta)
    shards = meta.get("shards", 1)
    if shards != trainer.shards:
        raise ValueError(f"the checkpoint has {shards} shards, this run {trainer.shards}")
    trainer.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    for key, v in meta["optimizer"]["scalars"].items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    trainer.batches.load(tensors, meta["batches"])
    trainer.streams.load(tensors)
    if trainer.ema is not None:
        trainer.ema = [tensors[f"ema.{i}"].to(trainer.train_x.device) for i in range(len(trainer.params))]
    trainer.step, trainer.samples_seen = meta["step"], meta["samples_seen"]
    trainer.seconds, trainer.lr = meta["seconds"], meta["lr"]
    guard = meta.get("guard", {})
    trainer.skipped, trainer.norm_steps = guard.get("skipped", 0), guard.get("norm_steps", 0)
    if "guard.norm_sum" in tensors:
        trainer.norm_sum.copy_(tensors["guard.norm_sum"])
    trainer.point_index = meta.get("next_point", sum(p <= trainer.samples_seen for p in trainer.points))
    trainer.checkpoint_step = trainer.step
