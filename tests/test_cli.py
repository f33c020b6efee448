"""The command line: a table of invocations, their JSON output and their one-line errors with exit code 2."""
import json

import pytest

from aevb.data import fetch as data_fetch
from aevb import runs
from aevb.cli import main


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty cache and no system data folder."""
    def refuse(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data_fetch, "_fetch_url", refuse)
    monkeypatch.setattr(data_fetch, "_npm_pack", refuse)
    monkeypatch.setattr(data_fetch, "_SYSTEM_ROOT", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AEVB_DATA", raising=False)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--dataset", "digits", "--latent-dim", "3", "--hidden", "16", "--samples", "2000",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_eval_prints_json(digits_run, capsys):
    assert main(["eval", str(digits_run), "--num-samples", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_test"] == 297 and result["n_train"] == 1500 and result["num_samples"] == 3
    assert -60 < result["test_elbo"] < 0  # 64 pixels of 8x8 digits: a trained bound lies in this range
    assert result["test_elbo"] == pytest.approx(result["test_rec"] - result["test_kl"], abs=1e-6)


def test_sample_writes_png(digits_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(digits_run), "--n", "16", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_of_a_finished_run_changes_nothing(digits_run, capsys):
    before = (digits_run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(digits_run), "--no-progress"]) == 0
    assert (digits_run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "mnist", "--out", "{tmp}/x", "--no-progress"], "missing train-images"),
    (["train", "--dataset", "digits", "--lr", "-1", "--out", "{tmp}/x"], None),  # argparse: exit 2
    (["train", "--dataset", "digits", "--hidden", "a,b", "--out", "{tmp}/x"], None),
    (["train", "--dataset", "imagenet", "--out", "{tmp}/x"], None),
    (["train", "--dataset", "digits", "--samples", "0", "--out", "{tmp}/x"], None),
    (["train", "--dataset", "digits", "--weight-decay", "lots", "--out", "{tmp}/x"], None),  # argparse: exit 2
    (["train", "--dataset", "digits", "--device", "tpu9", "--out", "{tmp}/x"], "--device"),
    (["train", "--resume", "{tmp}/nothing-here"], "not found"),
    (["eval", "{tmp}/nothing-here"], "not found"),
    (["sample", "{tmp}/nothing-here"], "not found"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, offline, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) if message is None else _nullcontext():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err.strip()
    if message is None:
        return
    assert message in err and len(err.splitlines()) == 1 and err.startswith("aevb: error:")
    assert not (tmp_path / "x").exists()  # nothing partial left behind


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "imagenet"])
    assert e.value.code == 2


def test_existing_run_is_not_overwritten(digits_run, capsys):
    assert main(["train", "--dataset", "digits", "--out", str(digits_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--dataset", "digits", "--out", str(blocker / "run")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_other_format_version_is_refused(digits_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "old"
    shutil.copytree(digits_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["format_version"] = 99
    (other / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(other)]) == 2
    assert "format version 99" in capsys.readouterr().err


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_eval_marginal_likelihood_json(digits_run, capsys):
    assert main(["eval", str(digits_run), "--method", "is", "--k", "200", "--limit", "50"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["n"] == 50 and r["k"] == 200 and r["method"] == "is" and r["split"] == "test"
    assert r["log_likelihood"] > r["elbo"]  # IS with K = 200 sits above the ELBO of the same points
    assert r["bits_per_dim"] == pytest.approx(-r["log_likelihood"] / (64 * 0.6931471805599453))


def test_eval_compile_is_the_same_estimate_and_only_for_is(digits_run, capsys):
    args = ["eval", str(digits_run), "--method", "is", "--k", "100", "--limit", "20"]
    results = []
    for extra in ([], ["--compile"]):
        assert main(args + extra) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[1]["log_likelihood"] == pytest.approx(results[0]["log_likelihood"], rel=1e-6)
    assert main(["eval", str(digits_run), "--method", "hmc", "--compile"]) == 2
    err = capsys.readouterr().err
    assert "--compile applies to --method is" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def no_cxx():
    """torch.compile without a working C++ compiler (and without its caches, which would skip the compiler)."""
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False,
                         "autotune_local_cache": False}):
        yield
    torch._dynamo.reset()


def test_compile_failure_is_one_line_and_leaves_no_run_behind(digits_run, no_cxx, tmp_path, capsys):
    out = tmp_path / "compiled"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "8", "--samples", "300",
                 "--compile", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aevb: error: --compile: torch.compile failed (") and err.endswith("run without --compile")
    assert len(err.splitlines()) == 1
    assert not out.exists()  # nothing to resume: the same --out works again
    assert main(["eval", str(digits_run), "--method", "is", "--k", "10", "--limit", "5", "--compile"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's first line
    assert last.startswith("aevb: error: --compile: torch.compile failed (InductorError: ")


def test_remove_unstarted_keeps_runs_that_hold_more(tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    (started / runs.CONFIG).write_text("{}")
    (started / runs.METRICS).write_text("")
    assert not runs.remove_unstarted(started) and (started / runs.CONFIG).exists()
    (started / runs.METRICS).unlink()
    assert runs.remove_unstarted(started) and not started.exists()
    assert not runs.remove_unstarted(tmp_path / "missing")
    split = tmp_path / "split"  # your own data split by a fraction: the held-out indices are written at creation
    split.mkdir()
    (split / runs.SPLIT).write_bytes(b"")
    assert not runs.remove_unstarted(split)  # no config.json: not a run folder aevb made
    (split / runs.CONFIG).write_text("{}")
    assert runs.remove_unstarted(split) and not split.exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "100000", "--samples", "300"], "a minibatch of 100,000 is larger than the 36 training"),
    (["--batch-size", "20", "--samples", "15"], "15 datapoints to train on are fewer than one minibatch of 20"),
])
def test_a_minibatch_the_data_or_the_budget_cannot_fill_is_refused(tmp_path, capsys, flags, message):
    (tmp_path / "t.csv").write_text("a,b\n" + "\n".join(f"{i},{i % 7}" for i in range(40)))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "t.csv"), *flags, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()  # config.json and split.safetensors removed with the folder


def test_eval_grid_needs_two_latent_dims(digits_run, capsys):
    assert main(["eval", str(digits_run), "--method", "grid", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aevb: error:") and len(err.strip().splitlines()) == 1


def test_a_picture_of_too_many_samples_is_refused(digits_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(digits_run), "--n", "10001", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aevb: error: --n 10001: a picture holds at most 10,000 samples") and "\n" not in err
    assert not out.exists()


def test_an_allocation_that_fails_is_one_line_and_other_errors_are_not_hidden(digits_run, monkeypatch, capsys):
    import aevb.cli.evaluate as evaluate

    def alloc(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 204800000000 bytes. Error code 12")

    monkeypatch.setattr(evaluate, "sample_grid", alloc)
    assert main(["sample", str(digits_run), "--n", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aevb: error: out of memory ([enforce fail") and "ask for less" in err and "\n" not in err

    def bug(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(evaluate, "sample_grid", bug)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        main(["sample", str(digits_run), "--n", "4"])
