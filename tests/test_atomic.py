"""atomic_write: whole-or-nothing, and the permissions of a plain open()."""

import os
import stat

import pytest

from openrlhf.utils import atomic
from openrlhf.utils.atomic import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_write(str(tmp_path / "a.jsonl")) as f:
            f.write("{}\n")
        with open(tmp_path / "b.jsonl", "w") as f:
            f.write("{}\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.jsonl").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.jsonl").st_mode) == 0o666 & ~umask


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write("new, half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.json"]


def test_atomic_write_interrupted_while_making_its_temp_file_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM (a KeyboardInterrupt) landing after the temp file exists but before the write
    starts (here: while its permissions are set) removes it and leaves the old file as it was."""
    target = tmp_path / "latest"
    target.write_text("global_step1")

    def interrupted(*_a):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(atomic.os, "fchmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(target)) as f:
            f.write("global_step2")
    assert sorted(os.listdir(tmp_path)) == ["latest"] and target.read_text() == "global_step1"
