import os

import pytest

from medclassify.errors import MedClassifyError
from medclassify.run import RunWriter


def test_run_appears_only_when_committed(tmp_path):
    w = RunWriter(tmp_path / "run")
    (w.path / "run.json").write_text("{}")
    assert not (tmp_path / "run").exists()
    assert w.commit() == tmp_path / "run"
    assert (tmp_path / "run" / "run.json").is_file()
    with pytest.raises(MedClassifyError, match="already exists"):
        RunWriter(tmp_path / "run")


def test_partials_of_killed_processes_are_cleared_but_live_ones_kept(tmp_path):
    dead_pid = 2**22 + 12345  # above pid_max on Linux: no such process
    dead = tmp_path / f".run.partial-{dead_pid}"
    dead.mkdir()
    live = tmp_path / f".run.partial-{os.getppid()}"  # a process that is certainly running
    live.mkdir()
    other = tmp_path / f".other.partial-{dead_pid}"  # another run's: not ours to touch
    other.mkdir()
    w = RunWriter(tmp_path / "run")
    assert not dead.exists()
    assert live.exists() and other.exists()
    w.abort()
    assert not w.path.exists()
