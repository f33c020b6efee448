"""Data-parallel training with torchrun (gloo, 2 CPU processes) against single-process training.

Each of the 2 processes computes one of the 2 shards of every global minibatch, with that shard's random streams,
and DistributedDataParallel averages the gradients; `aevb train --shards 2` in one process computes the same two
shards in turn. The two must agree up to the order of float additions: the tolerance is 1e-6 relative on every
metric and 1e-6 absolute on every weight (with 2 processes the average is a halving, which is exact, and the
runs were measured bit-identical).
"""
import json
import subprocess
import sys
import time

import pytest

from aevb import runs
from killing import env, metrics, run_aevb

pytestmark = pytest.mark.slow

ARGS = ["--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--samples", "20000", "--batch-size", "50",
        "--binarize", "dynamic", "--ema", "0.99", "--seed", "5"]
RUNTIME = ["--threads", "1", "--no-progress"]


def torchrun(*args, timeout=240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aevb",
           *map(str, args)]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def _close(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), k
            else:
                assert ra[k] == rb[k], k


def _weights_close(a, b):
    wa, wb = runs.read_tensors(a / runs.WEIGHTS), runs.read_tensors(b / runs.WEIGHTS)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    r = run_aevb("train", *ARGS, *RUNTIME, "--shards", "2", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_two_processes_match_one_process_with_the_same_shards(single, tmp_path):
    r = torchrun("train", *ARGS, *RUNTIME, "--out", tmp_path / "ddp")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 2 processes" in r.stdout
    config = json.loads((tmp_path / "ddp" / runs.CONFIG).read_text())
    assert config["train"]["shards"] == 2 and config["world_size"] == 2
    _close(metrics(tmp_path / "ddp"), metrics(single))
    assert _weights_close(tmp_path / "ddp", single) <= 1e-6
    # rank 0 alone wrote the folder, and nothing was left half-written
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "checkpoint.safetensors", "config.json", "manifold.png", "metrics.jsonl", "model.safetensors", "samples.png"]


def test_a_killed_single_process_run_resumes_on_two_processes(single, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "aevb", "train", *ARGS, *RUNTIME, "--shards", "2",
                             "--checkpoint-every", "0.05", "--out", str(run)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    step = None
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / runs.CHECKPOINT).exists():
            try:
                _, meta = runs.parse_tensors((run / runs.CHECKPOINT).read_bytes(), "c")
                step = json.loads(meta[runs.STATE_KEY])["step"]
            except runs.RunError:
                pass
            if step and step >= 50:
                break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert step and step < 400, f"the run was not caught in the middle (step {step})"
    r = torchrun("train", "--resume", run, *RUNTIME)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "aevb: resuming" in r.stdout
    _close(metrics(run), metrics(single))
    assert _weights_close(run, single) <= 1e-6


def test_a_bad_run_folder_fails_every_process_without_hanging(tmp_path):
    start = time.monotonic()
    r = torchrun("train", "--resume", tmp_path / "nothing", *RUNTIME, "--dist-timeout", "60")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"aevb: error: {tmp_path / 'nothing' / 'config.json'}: not found" in out
    assert f"aevb[rank 1]: error: {tmp_path / 'nothing' / 'config.json'}: not found" in out
    assert time.monotonic() - start < 120


def test_a_process_that_joined_a_group_ends_with_its_status_and_its_output_flushed():
    # end_process leaves with os._exit, which skips the flush of Python's buffers that a normal exit does
    code = ("import sys; from aevb import distributed as d; print('written', end=''); "
            "print('to stderr', end='', file=sys.stderr); d._joined = True; d.end_process(3); print('not reached')")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "written", "to stderr")
    code = "from aevb import distributed as d; print(d.end_process(3))"
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "3\n")
