"""Run-folder files are written atomically with the permissions an ordinary open() would give them."""
import os

from aevb import runs


def test_atomic_writes_get_the_umask_mode(tmp_path):
    runs.write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind
