"""`aevb reproduce`: the paper's read-off values, the training lengths, and small end-to-end runs on real data."""
import csv
import re
from pathlib import Path

import json

import pytest
import torch

from aevb.paper import reproduce
from aevb.cli import main

PAPER = Path(__file__).resolve().parents[2] / "shared" / "docs" / "PAPER.md"


def _paper_fig2_rows():
    rows = {}
    for line in PAPER.read_text().splitlines():
        m = re.match(r"\| (MNIST|Frey) Nz=(\d+) \|(.*)\|$", line)
        if m:
            cells = [c.strip() for c in m.group(3).split("|")]
            rows[(m.group(1).lower(), int(m.group(2)))] = cells
    return rows


def _number(cell):
    m = re.search(r"-?\d+(\.\d+)?", cell)
    return float(m.group(0)) if m and not cell.startswith("<") else None


@pytest.mark.skipif(not PAPER.exists(), reason="../shared/docs/PAPER.md not found")
def test_figure2_values_match_paper_md():
    rows = _paper_fig2_rows()
    assert set(rows) == set(reproduce.PAPER_FIG2)
    columns = [("aevb", "any", 1e6), ("aevb", "any", 1e7), ("aevb", "train", 1e8), ("aevb", "test", 1e8)]
    for panel, cells in rows.items():
        ours = reproduce.PAPER_FIG2[panel]
        for key, cell in zip(columns, cells):
            assert ours.get(key) == _number(cell), (panel, key)
        assert ours[("wake_sleep", "any", 1e8)] == _number(cells[5])


def test_training_length():
    assert reproduce.training_length("fig2", None, 0.1) == 10_000_000
    assert reproduce.training_length("fig3", None, 0.5) == 30_000_000
    assert reproduce.training_length("fig5", 12345, 0.1) == 12345
    with pytest.raises(ValueError):
        reproduce.training_length("fig2", None, 0.0)


def test_paper_settings_replace_only_nz():
    s = reproduce.paper_settings("mnist", 7, estimator="wake_sleep")
    assert s["model"]["latent_dim"] == 7 and s["model"]["hidden"] == (500,)
    assert s["train"]["estimator"] == "wake_sleep" and s["train"]["optimizer"] == "adagrad"
    assert reproduce.PRESETS["paper-mnist-200"]["model"]["latent_dim"] == 200  # the preset itself is untouched


def test_fig2_summary_reads_the_checkpoints_and_the_smallest_gap():
    def row(method, split, n, elbo):
        return {"dataset": "mnist", "latent_dim": "20", "method": method, "split": split, "samples_seen": str(n),
                "elbo": str(elbo)}  # as read back from fig2.csv
    rows = [row("aevb", "test", 500_000, -130.0), row("aevb", "test", 1_000_000, -120.0),
            row("aevb", "train", 1_000_000, -121.0), row("aevb", "test", 2_000_000, -115.0),
            row("aevb", "train", 2_000_000, -114.0), row("aevb", "test", 10_000_000, -103.0),
            row("aevb", "train", 10_000_000, -102.5),
            row("wake_sleep", "test", 500_000, -125.0),  # above AEVB, but before 1e6: not counted
            row("wake_sleep", "test", 1_000_000, -122.5), row("wake_sleep", "train", 1_000_000, -123.0),
            row("wake_sleep", "test", 2_000_000, -118.0), row("wake_sleep", "train", 2_000_000, -114.5)]
    (s,) = reproduce.fig2_summary(rows)
    assert (s["dataset"], s["latent_dim"]) == ("mnist", 20)
    assert (s["aevb_test_1e6"], s["aevb_train_1e6"], s["paper_1e6"]) == (-120.0, -121.0, -125.8)
    assert (s["aevb_test_1e7"], s["aevb_train_1e7"], s["paper_1e7"]) == (-103.0, -102.5, -104.6)
    assert (s["wake_sleep_samples"], s["wake_sleep_test"]) == (2_000_000, -118.0)
    assert s["min_gap"] == pytest.approx(0.5)  # train at 2e6: -114.0 - (-114.5)
    table = reproduce.format_fig2_summary([s])
    assert ("| mnist Nz=20 | -120.00 (-121.00) | -125.80 | -103.00 (-102.50) | -104.60 | -118.00 @2e+06 | 0.50 |"
            in table)
    (short,) = reproduce.fig2_summary([r for r in rows if r["method"] == "aevb" and int(r["samples_seen"]) < 10**7])
    assert short["aevb_test_1e7"] is None and short["wake_sleep_test"] is None and short["min_gap"] is None


def test_fig2_summary_averages_seeds_and_keeps_their_range():
    def row(seed, method, split, n, elbo):
        return {"dataset": "mnist", "latent_dim": "200", "method": method, "seed": str(seed), "split": split,
                "samples_seen": str(n), "elbo": str(elbo)}
    rows = []
    for seed, (a6, a7, ws) in enumerate([(-120.0, -103.5, -125.0), (-121.0, -103.0, -126.0), (-119.0, -103.1,
                                                                                                -124.0)]):
        rows += [row(seed, "aevb", split, n, v + (split == "train")) for split in ("test", "train")
                 for n, v in ((1_000_000, a6), (10_000_000, a7))]
        rows += [row(seed, "wake_sleep", split, 1_000_000, ws) for split in ("test", "train")]
    (s,) = reproduce.fig2_summary(rows)
    assert s["seeds"] == 3
    assert s["aevb_test_1e6"] == pytest.approx(-120.0) and s["aevb_train_1e6"] == pytest.approx(-119.0)
    assert s["aevb_test_1e7"] == pytest.approx(-103.2) and s["aevb_test_1e7_range"] == (-103.5, -103.0)
    assert s["paper_1e7"] == -103.3
    assert s["min_gap"] == pytest.approx(5.0)  # mean AEVB -120 against mean wake-sleep -125, test split
    table = reproduce.format_fig2_summary([s])
    assert ("| mnist Nz=200, mean of 3 seeds | -120.00 [-121.00, -119.00] (-119.00) | -121.50 "
            "| -103.20 [-103.50, -103.00] (-102.20) | -103.30 |") in table


def test_fig2_small_run_writes_csv_and_png(tmp_path, shared_data):
    rows = reproduce.fig2(tmp_path, latent_dims=(3,), samples=1000, data_dir=shared_data, progress=False,
                          quiet=True)
    with open(tmp_path / "fig2.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) > 0
    assert {"dataset", "latent_dim", "method", "split", "samples_seen", "elbo"} <= set(written[0])
    assert {r["method"] for r in written} == {"aevb", "wake_sleep"}
    assert max(int(r["samples_seen"]) for r in written) == 1000
    assert (tmp_path / "fig2_mnist.png").stat().st_size > 1000
    assert (tmp_path / "fig2_summary.md").read_text().startswith("| panel | AEVB @1e6")


def test_fig2_jobs_give_the_same_curves_as_one_process(tmp_path, shared_data):
    torch.set_num_threads(1)  # the workers' thread count, so that both compute in the same order
    kwargs = dict(latent_dims=(3, 10), samples=1500, baseline_samples=1000, data_dir=shared_data, progress=False,
                  quiet=True)
    one = reproduce.fig2(tmp_path / "one", jobs=1, **kwargs)
    two = reproduce.fig2(tmp_path / "two", jobs=2, **kwargs)
    key = lambda r: (r["latent_dim"], r["method"], r["split"], r["samples_seen"])  # noqa: E731
    assert sorted(map(key, one)) == sorted(map(key, two))
    assert {r["method"]: max(x["samples_seen"] for x in one if x["method"] == r["method"]) for r in one} == \
        {"aevb": 1500, "wake_sleep": 1000}
    by_key = {key(r): r["elbo"] for r in two}
    for r in one:
        assert r["elbo"] == pytest.approx(by_key[key(r)], abs=1e-3)
    settings = json.loads((tmp_path / "two" / "fig2_settings.json").read_text())
    assert settings["jobs"] == 2 and settings["baseline_samples"] == 1000 and settings["seconds"] > 0


def test_fig2_seeds_train_every_model_once_per_seed(tmp_path, shared_data):
    torch.set_num_threads(1)
    kwargs = dict(latent_dims=(3,), samples=1000, data_dir=shared_data, progress=False, quiet=True)
    rows = reproduce.fig2(tmp_path / "two", seed=4, seeds=2, **kwargs)
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("aevb", "wake_sleep") for s in (4, 5)}
    alone = reproduce.fig2(tmp_path / "one", seed=5, **kwargs)  # seed 5 by itself gives seed 5's curve
    seed5 = {(r["method"], r["split"], r["samples_seen"]): r["elbo"] for r in rows if r["seed"] == 5}
    assert {(r["method"], r["split"], r["samples_seen"]): r["elbo"] for r in alone} == pytest.approx(seed5)
    seed4 = {(r["method"], r["split"], r["samples_seen"]): r["elbo"] for r in rows if r["seed"] == 4}
    assert seed4 != pytest.approx(seed5)  # the seeds differ
    (s,) = reproduce.fig2_summary(rows)
    assert s["seeds"] == 2
    with open(tmp_path / "two" / "fig2.csv") as f:
        assert {r["seed"] for r in csv.DictReader(f)} == {"4", "5"}
    assert json.loads((tmp_path / "two" / "fig2_settings.json").read_text())["seeds"] == 2
    assert "mean of 2 seeds" in (tmp_path / "two" / "fig2_summary.md").read_text()
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        reproduce.fig2(tmp_path / "zero", seeds=0, **kwargs)


def test_paper_settings_init():
    assert reproduce.paper_settings("mnist", 5)["model"]["init"] == "paper"
    assert reproduce.paper_settings("mnist", 5, "torch")["model"]["init"] == "torch"


def test_fig3_small_run_has_every_method_and_split(tmp_path, shared_data):
    rows = reproduce.fig3(tmp_path, n_trains=(200,), samples=2000, eval_points_n=10, data_dir=shared_data,
                          quiet=True)
    assert {(r["method"], r["split"]) for r in rows} == {(m, s) for m in ("aevb", "wake_sleep", "mcem")
                                                         for s in ("train", "test")}
    assert all(r["log_px"] < 0 for r in rows)
    assert (tmp_path / "fig3.png").exists() and (tmp_path / "fig3.csv").exists()


def test_cli_fig5_and_bad_input(tmp_path, shared_data, capsys):
    out = tmp_path / "f5"
    assert main(["reproduce", "fig5", "--latent-dims", "2", "--samples", "2000", "--data-dir", str(shared_data),
                 "--no-progress", "--out", str(out)]) == 0
    assert (out / "fig5_nz2.png").exists()
    assert main(["reproduce", "fig2", "--budget", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--budget must be positive" in capsys.readouterr().err
    assert main(["reproduce", "fig3", "--n-train", "99999999", "--samples", "10", "--data-dir", str(shared_data),
                 "--out", str(tmp_path / "y")]) == 2
    assert main(["reproduce", "fig2", "--jobs", "0", "--out", str(tmp_path / "j")]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert main(["reproduce", "fig5", "--baseline-samples", "10", "--out", str(tmp_path / "b")]) == 2
    assert "--baseline-samples applies to fig2 and fig3" in capsys.readouterr().err
    assert main(["reproduce", "fig3", "--seeds", "2", "--out", str(tmp_path / "s")]) == 2
    assert "--seeds applies to fig2" in capsys.readouterr().err
    assert main(["reproduce", "fig2", "--seeds", "0", "--out", str(tmp_path / "s0")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "fig5", "--latent-dims", "two", "--out", str(tmp_path / "z")])
    assert e.value.code == 2


def _children(pid: int) -> set[int]:
    """The live child processes of `pid` (Linux /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_ends_a_reproduction_and_its_workers(shared_data, tmp_path):
    import signal
    import time

    from killing import aevb

    proc = aevb("reproduce", "fig5", "--samples", "1e8", "--jobs", "2", "--data-dir", shared_data,
                "--out", tmp_path / "fig5", "--no-progress")
    end = time.monotonic() + 120
    while len(workers := _children(proc.pid) - {proc.pid}) < 2:
        assert proc.poll() is None and time.monotonic() < end, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    time.sleep(2)  # the workers are training
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "aevb: interrupted" in proc.stdout.read()
    end = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
              for w in workers if Path(f"/proc/{w}/stat").exists()):
        assert time.monotonic() < end, "worker processes left running"
        time.sleep(0.2)
