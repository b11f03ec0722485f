import os

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_dir, atomic_write_text, expand_paths


def test_atomic_write_makes_an_ordinary_file(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    mode = target.stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed half way")
    assert (target / "a").read_text() == "1"  # the old complete directory survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_expand_paths_file_dir_glob(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "notes.txt"):
        (tmp_path / name).write_text("{}\n")
    assert expand_paths(str(tmp_path / "a.jsonl")) == [str(tmp_path / "a.jsonl")]
    assert [os.path.basename(p) for p in expand_paths(str(tmp_path))] == ["a.jsonl", "b.jsonl"]
    assert len(expand_paths(str(tmp_path / "*.jsonl"))) == 2
    with pytest.raises(RlhfkitError, match="no file matches"):
        expand_paths(str(tmp_path / "*.parquet"))
    with pytest.raises(RlhfkitError, match="no such file"):
        expand_paths(str(tmp_path / "missing.jsonl"))
