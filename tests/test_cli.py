import json
import subprocess
import sys

import pytest

from excon.cli import build_parser, main

STAGES = ["prepare", "pretrain", "probe", "evaluate", "report", "study"]


def test_help_lists_stages():
    out = subprocess.run(
        [sys.executable, "-m", "excon.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([stage, "--help"])
    assert info.value.code == 0
    assert "--params" in capsys.readouterr().out


def test_bad_param_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--set", "train.epochz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("excon pretrain: error: train.epochz: unknown key")
    assert "\n" not in err


def test_missing_prepared_data_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "\n" not in err


def test_study_end_to_end(prepared, tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The study finds the prepared data at <data.prepared_dir>/<data.dataset>.
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "animals").symlink_to(prepared)
    sets = [a for s in [*tiny_overrides, "train.epochs=1"] for a in ("--set", s)]
    assert main(["study", *sets, "--methods", "ce", "supcon"]) == 0
    out = capsys.readouterr().out
    assert "ce " in out and "supcon " in out and "test/top1" in out
    rows = json.loads((tmp_path / "runs" / "animals" / "study.json").read_text())
    assert [r["method"] for r in rows] == ["ce", "supcon"]
    # A second study reuses the finished runs (same weights, same probe) instead of failing.
    assert main(["study", *sets, "--methods", "ce", "supcon"]) == 0
    assert "resuming" in capsys.readouterr().err
    again = json.loads((tmp_path / "runs" / "animals" / "study.json").read_text())
    assert [r["test/top1"] for r in again] == [r["test/top1"] for r in rows]
    # Changed parameters are refused with the key named, and --fresh starts over.
    assert main(["study", *sets, "--set", "optim.lr=0.2", "--methods", "ce"]) == 2
    assert "other parameters (optim.lr)" in capsys.readouterr().err
    assert main(["study", *sets, "--set", "optim.lr=0.2", "--methods", "ce", "--fresh"]) == 0
