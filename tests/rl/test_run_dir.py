"""The one run-folder scheme (`rl.run_dir.RunDir`) that `rl.train` and `rl.collect.sac` share."""

from __future__ import annotations

import json

import pytest
import torch

from rl._safe_load import CheckpointError
from rl.run_dir import LOCK, MARKER, RunDir, RunDirError


def _folder(path) -> RunDir:
    return RunDir(path, "tool.a", ("log.csv",), own_files=r"notes\.json", fresh_clears=("tb",))


def test_a_resume_cuts_each_log_back_to_the_checkpoints_offsets(tmp_path) -> None:
    d = _folder(tmp_path)
    assert d.check(resume=False) is None
    d.claim(fresh=True, about={"what": "x"})
    d.append_csv("log.csv", {"step": 1, "v": 0.5})
    d.save_checkpoint({"step": 1})
    d.append_csv("log.csv", {"step": 2, "v": 0.25})  # after the checkpoint: to be redone
    d.close()
    assert json.loads((tmp_path / MARKER).read_text())["what"] == "x"
    again = _folder(tmp_path)
    blob = again.check(resume=True, required=("step",))
    assert blob["step"] == 1 and again.offsets == blob["offsets"]
    again.claim(fresh=False)
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step,v", "1,0.5"]
    again.append_csv("log.csv", {"step": 2, "v": 0.25})
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step,v", "1,0.5", "2,0.25"]
    with pytest.raises(KeyError, match="'other.csv' is not one of this run folder's logs"):
        again.append_csv("other.csv", {"a": 1})
    again.close()


def test_a_fresh_start_over_a_run_without_a_checkpoint_removes_its_logs_and_stale_temps(tmp_path) -> None:
    d = _folder(tmp_path)
    d.claim(fresh=True)
    d.append_csv("log.csv", {"step": 1})
    (tmp_path / "tb").mkdir()
    (tmp_path / ".notes.json.abcd1234.tmp").write_text("half")  # a killed atomic write of ours
    (tmp_path / ".mine.abcd1234.tmp").write_text("user")  # not ours: stays
    d.close()
    again = _folder(tmp_path)
    assert again.check(resume=False) is None
    again.claim(fresh=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".mine.abcd1234.tmp", LOCK, MARKER])
    again.close()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize(
    ("offsets", "match"),
    [
        ([1, 2], "its 'offsets' is a list, not a mapping"),
        ({"log.csv": -1}, r"offsets\['log.csv'\] = -1"),
        ({"other.csv": 3}, r"offsets\['other.csv'\] = 3 is not a size of one of \('log.csv',\)"),
    ],
)
def test_a_checkpoint_with_bad_offsets_is_refused_by_name(tmp_path, offsets, match) -> None:
    d = _folder(tmp_path)
    d.claim(fresh=True)
    d.close()
    torch.save({"step": 1, "offsets": offsets}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=match):
        _folder(tmp_path).check(resume=True)


def test_a_damaged_or_foreign_marker_is_refused_and_nothing_is_written(tmp_path) -> None:
    (tmp_path / MARKER).write_text("{not json")
    with pytest.raises(RunDirError, match="is damaged"):
        _folder(tmp_path).check(resume=False)
    (tmp_path / MARKER).write_text(json.dumps({"tool": "tool.b"}))
    with pytest.raises(RunDirError, match="holds a run of tool.b, not of tool.a"):
        _folder(tmp_path).check(resume=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER]
    with pytest.raises(RunDirError, match="--resume: .* stopped before its first checkpoint"):
        RunDir(tmp_path, "tool.b").check(resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="--out .*file is a file, not a directory"):
        RunDir(tmp_path / "file", "tool.a", option="--out").check(resume=False)


def test_a_checkpoint_without_offsets_keeps_the_logs_whole(tmp_path) -> None:
    d = _folder(tmp_path)
    d.claim(fresh=True)
    d.append_csv("log.csv", {"step": 1})
    d.close()
    torch.save({"step": 1}, tmp_path / "checkpoint.pt")  # as a SAC run from before the scheme wrote it
    with pytest.raises(CheckpointError, match="offsets"):  # where the sizes must be there (rl.train)
        _folder(tmp_path).check(resume=True, required=("step",))
    again = _folder(tmp_path)
    again.check(resume=True, required=("step",), sizes_recorded=False)
    again.claim(fresh=False)
    again.append_csv("log.csv", {"step": 2})
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step", "1", "2"]
    again.close()


def test_a_resume_claim_without_a_check_is_refused_before_any_log_is_cut(tmp_path) -> None:
    d = _folder(tmp_path)
    d.claim(fresh=True)
    d.append_csv("log.csv", {"step": 1})
    d.save_checkpoint({"step": 1})
    d.close()
    with pytest.raises(RuntimeError, match=r"call check\(resume=True\) first"):
        _folder(tmp_path).claim(fresh=False)
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step", "1"]
    assert not (tmp_path / LOCK).exists()


def test_a_marker_less_folder_with_a_checkpoint_is_told_how_to_mark_it(tmp_path) -> None:
    torch.save({"step": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r'no \.rl-run\.json.*resumes once .* holds \{"tool": "tool.a"\}'):
        _folder(tmp_path).check(resume=True)
