"""The one atomic-write helper: a failed write leaves the old file and no temporary behind."""
import os

import pytest

from ldm.files import atomic_path, part_path


def test_a_write_replaces_the_file_only_when_it_succeeds(tmp_path):
    target = tmp_path / "run.json"
    assert part_path(target) == str(tmp_path / "run.part.json")
    with atomic_path(target) as tmp:
        open(tmp, "w").write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["run.json"]
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["run.json"]
