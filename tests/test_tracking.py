"""MLflow tracking of the stages, on a real local SQLite store."""

import socket

import mlflow
import pytest

from excon.cli import main
from excon.tracking import PARENT_ENV, start_parent


def tiny_sets(tiny_overrides, tmp_path, *extra):
    sets = [
        *tiny_overrides,
        "train.epochs=1",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture
def workdir(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "animals").symlink_to(prepared)
    return tmp_path


def test_stages_log_child_runs_under_one_parent(workdir, tiny_overrides, monkeypatch):
    from excon.config import load_config

    uri = f"sqlite:///{workdir}/mlflow.db"
    parent = start_parent(load_config(None, [f"tracking.uri={uri}"]))
    monkeypatch.setenv(PARENT_ENV, parent)
    sets = tiny_sets(tiny_overrides, workdir)
    assert main(["pretrain", "--method", "supcon", *sets]) == 0
    assert main(["probe", "--method", "supcon", *sets]) == 0

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["excon"], output_format="list")
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r.info.run_id != parent}
    assert set(children) == {"pretrain-supcon", "probe-supcon"}
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["excon.method"] == "supcon"
        assert run.data.tags["excon.seed"] == "0"
        assert len(run.data.tags["excon.data_hash"]) == 64
        assert run.data.params["train.epochs"] == "1"
    pre = children["pretrain-supcon"]
    history = mlflow.MlflowClient().get_metric_history(pre.info.run_id, "train/loss")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(pre.info.run_id)}
    assert {"figures", "summary.json", "model.json"} <= artifacts
    assert "test/top1" in children["probe-supcon"].data.metrics


def test_unreachable_server_fails_before_any_work(workdir, tiny_overrides, capsys):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = tiny_sets(tiny_overrides, workdir, f"tracking.uri=http://127.0.0.1:{port}")
    assert main(["pretrain", "--method", "ce", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "tracking.enabled=false" in err[0]
    assert not (workdir / "runs").exists()


def test_tracking_off_writes_no_store(workdir, tiny_overrides):
    sets = tiny_sets(tiny_overrides, workdir, "tracking.enabled=false")
    assert main(["pretrain", "--method", "ce", *sets]) == 0
    assert not (workdir / "mlflow.db").exists()


def test_logging_failure_keeps_the_results(workdir, tiny_overrides, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError("artifact store is gone")

    monkeypatch.setattr(mlflow, "log_artifacts", broken)
    assert main(["pretrain", "--method", "ce", *tiny_sets(tiny_overrides, workdir)]) == 0
    assert (workdir / "runs" / "animals" / "ce" / "model.safetensors").is_file()
    assert "log_artifacts failed, results kept on disk only" in capsys.readouterr().err
