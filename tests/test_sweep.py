"""`aevb sweep`: one run folder per grid point with the point's settings, a summary that matches the runs, failures
that do not stop the others, re-runs that skip finished runs and resume started ones, and bad grids refused before
anything is created."""
import csv
import json

import numpy as np
import pytest

from aevb import runs
from aevb.cli import main

TINY = ["--dataset", "digits", "--samples", "1000", "--hidden", "16", "--no-progress"]


def _summary(out):
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    rc = main(["sweep", "--out", str(out), "--jobs", "2", "--grid", "latent-dim", "2", "3", "--grid", "beta", "1",
               "0.5", *TINY])
    return out, rc


def test_one_run_folder_per_point_with_its_settings(swept):
    out, rc = swept
    assert rc == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "logs")
    assert names == ["latent-dim-2_beta-0.5", "latent-dim-2_beta-1", "latent-dim-3_beta-0.5", "latent-dim-3_beta-1"]
    for nz in (2, 3):
        for beta in ("1", "0.5"):
            config = json.loads((out / f"latent-dim-{nz}_beta-{beta}" / runs.CONFIG).read_text())
            assert config["model"]["latent_dim"] == nz and config["model"]["hidden"] == [16]
            assert config["train"]["beta"] == float(beta) and config["train"]["samples"] == 1000
            assert config["data"]["dataset"] == "digits"
            assert (out / f"latent-dim-{nz}_beta-{beta}" / "model.safetensors").is_file()


def test_summary_matches_each_runs_last_record(swept, capsys):
    out, _ = swept
    rows = _summary(out)
    assert len(rows) == 4
    for row in rows:
        last = runs.read_metrics(out / row["run"])[-1]
        assert row["status"] == "done" and row["error"] == ""
        assert float(row["test_elbo"]) == last["test_elbo"]
        assert int(row["samples_seen"]) == last["samples_seen"] == 1000
        assert float(row["seconds"]) == last["seconds"]
        assert row["run"] == f"latent-dim-{row['latent-dim']}_beta-{row['beta']}"


def test_rerun_skips_finished_runs(swept, capsys):
    out, _ = swept
    before = {p.name: (p / runs.METRICS).read_text() for p in out.iterdir() if p.name != "logs" and p.is_dir()}
    rc = main(["sweep", "--out", str(out), "--jobs", "2", "--grid", "latent-dim", "2", "3", "--grid", "beta", "1",
               "0.5", *TINY])
    assert rc == 0
    rows = _summary(out)
    assert [r["status"] for r in rows] == ["skipped"] * 4
    assert {p.name: (p / runs.METRICS).read_text() for p in out.iterdir() if p.name != "logs" and p.is_dir()} == before


def test_rerun_resumes_a_started_run(tmp_path):
    out = tmp_path / "grid"
    args = ["sweep", "--out", str(out), "--grid", "latent-dim", "2", *TINY]
    assert main(args) == 0
    run = out / "latent-dim-2"
    config = json.loads((run / runs.CONFIG).read_text())
    config["train"]["samples"] = 2000  # as if the run had been stopped half way
    runs.write_json(run / runs.CONFIG, config)
    assert main(args) == 0
    records = runs.read_metrics(run)
    assert records[-1]["samples_seen"] == 2000
    assert [r["samples_seen"] for r in records] == sorted({r["samples_seen"] for r in records})
    assert "resuming" in (out / "logs" / "latent-dim-2.log").read_text()
    assert float(_summary(out)[0]["test_elbo"]) == records[-1]["test_elbo"]


def test_a_failing_point_does_not_stop_the_others(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, (np.random.default_rng(0).random((300, 16)) > 0.5).astype(np.float32))
    out = tmp_path / "grid"
    rc = main(["sweep", "--out", str(out), "--jobs", "2", "--grid", "data", str(data), str(tmp_path / "gone.npy"),
               "--samples", "500", "--hidden", "8", "--latent-dim", "2", "--no-progress"])
    assert rc == 1
    rows = {r["status"]: r for r in _summary(out)}
    assert set(rows) == {"done", "failed"}
    assert float(rows["done"]["test_elbo"]) == runs.read_metrics(out / rows["done"]["run"])[-1]["test_elbo"]
    assert "gone.npy" in rows["failed"]["error"] and "\n" not in rows["failed"]["error"]
    assert rows["failed"]["test_elbo"] == ""
    err = capsys.readouterr().err
    assert f"aevb sweep: failed {rows['failed']['run']}: " in err


@pytest.mark.parametrize("grid, fixed, message", [
    (["--grid", "latent-dim", "2", "x"], [], "grid point latent-dim-x: argument --latent-dim: invalid int value"),
    (["--grid", "latent-dimz", "2"], [], "--grid latent-dimz: not a flag of aevb train"),
    (["--grid", "--latent-dimz", "2"], [], "--grid latent-dimz: not a flag of aevb train"),  # dashes kept
    (["--grid", "latent-dims", "2,2"], [], "grid point latent-dims-2,2: --latent-dims needs --stochastic-layers 2"),
    (["--grid", "out", "a"], [], "--grid out: not a flag of aevb train"),
    (["--grid", "latent-dim=2,3"], [], "write the flag and its values as words"),
    (["--grid", "latent-dim", "2", "--grid", "optimizer", "adam", "nope"], [], "argument --optimizer: invalid choice"),
    (["--grid", "latent-dim", "2"], ["--latent-dim", "3"], "--latent-dim is given both as a fixed flag and in --grid"),
    (["--grid", "latent-dim", "2", "--grid", "latent-dim", "3"], [], "given twice"),
    (["--grid", "test-fraction", "0.1", "0.2"], [], "only apply to your own data"),
])
def test_bad_grid_is_refused_before_anything_is_created(tmp_path, capsys, grid, fixed, message):
    out = tmp_path / "grid"
    assert main(["sweep", "--out", str(out), *grid, "--dataset", "digits", *fixed]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("aevb: error: ") and message in err
    assert not out.exists()


def test_fixed_flags_reach_every_run_as_written(tmp_path):
    from aevb.cli import build_parser
    from aevb.cli.sweep import plan
    args = build_parser().parse_args(["sweep", "--out", str(tmp_path / "grid"), "--grid", "seed", "1", "2",
                                      "--grid", "hidden", "16", "8,8", "--data", "x.npy", "--image-size", "28x32",
                                      "--lr", "auto", "--samples", "1e4", "--skip-bad"])
    points = plan(args)
    assert [p.name for p in points] == ["seed-1_hidden-16", "seed-1_hidden-8,8", "seed-2_hidden-16",
                                        "seed-2_hidden-8,8"]
    assert points[1].argv == ["--data", "x.npy", "--image-size", "28x32", "--skip-bad", "--lr", "auto", "--samples",
                              "10000", "--seed", "1", "--hidden", "8,8"]
    assert not (tmp_path / "grid").exists()


def test_the_flag_after_grid_may_keep_its_dashes():
    from aevb.cli import build_parser
    from aevb.cli.grid import undash_grid_flags
    from aevb.cli.sweep import plan
    dashed = ["sweep", "--out", "o", "--grid", "--seed", "1", "2", "--grid", "hidden", "16", "--lr", "0.1"]
    assert undash_grid_flags(dashed) == ["sweep", "--out", "o", "--grid", "seed", "1", "2", "--grid", "hidden",
                                            "16", "--lr", "0.1"]
    assert undash_grid_flags(["train", "--grid", "--seed"]) == ["train", "--grid", "--seed"]  # sweep only
    points = plan(build_parser().parse_args(undash_grid_flags(dashed)))
    assert [p.argv for p in points] == [["--lr", "0.1", "--seed", "1", "--hidden", "16"],
                                        ["--lr", "0.1", "--seed", "2", "--hidden", "16"]]


def _wait_for(condition, timeout=120.0):
    import time
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_an_interrupted_sweep_stops_its_runs_and_the_same_command_continues_them(tmp_path, signal_name):
    import signal
    import time

    from killing import aevb

    if signal_name == "SIGINT" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here (started in the background by a shell), and so by the sweep")

    out = tmp_path / "grid"
    argv = ["sweep", "--out", out, "--jobs", "2", "--grid", "seed", "1", "2", "3", "--dataset", "digits",
            "--samples", "5e7", "--hidden", "8", "--latent-dim", "2", "--no-progress"]
    first = aevb(*argv)
    started = [out / "seed-1" / runs.METRICS, out / "seed-2" / runs.METRICS]
    _wait_for(lambda: all(p.exists() and p.read_text() for p in started))
    first.send_signal(getattr(signal, signal_name))  # the sweep alone, not its process group
    assert first.wait(timeout=60) == 130
    assert "aevb sweep: interrupted; the runs stopped at their last checkpoints" in first.stdout.read()
    assert not (out / "seed-3").exists()  # queued, never started
    sizes = {p: p.stat().st_size for p in out.glob("seed-*/*")}
    time.sleep(1.5)
    assert {p: p.stat().st_size for p in out.glob("seed-*/*")} == sizes  # no run is left writing
    second = aevb(*argv)
    logs = [out / "logs" / "seed-1.log", out / "logs" / "seed-2.log"]
    _wait_for(lambda: all(p.exists() and "aevb: resuming" in p.read_text() for p in logs))
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 130
