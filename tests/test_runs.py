"""Run-folder files are written atomically with the permissions an ordinary open() would give them."""
import os

from aevb import runs


def test_atomic_writes_get_the_umask_mode(tmp_path):
    runs.write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_write_lines_streams_atomically_and_a_failing_source_leaves_the_old_file(tmp_path):
    path = tmp_path / "t.csv"
    runs.write_lines(path, (f"{i},{i * i}" for i in range(5)))
    assert path.read_text() == "0,0\n1,1\n2,4\n3,9\n4,16\n"

    def broken():
        yield "a,b"
        raise RuntimeError("the source failed")

    try:
        runs.write_lines(path, broken())
    except RuntimeError:
        pass
    assert path.read_text() == "0,0\n1,1\n2,4\n3,9\n4,16\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
