"""MLflow tracking of the stages, on a real local SQLite store."""

import hashlib
import importlib.util
import json
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


def test_stages_log_child_runs_under_one_parent(workdir, prepared, tiny_overrides, monkeypatch):
    from excon.config import load_config

    uri = f"sqlite:///{workdir}/mlflow.db"
    parent = start_parent(load_config(None, [f"tracking.uri={uri}"]))
    monkeypatch.setenv(PARENT_ENV, parent)
    monkeypatch.setenv("EXCON_GIT_COMMIT", "c0ffee" * 6)  # the image's commit, over git HEAD
    # one system-metrics point per 0.2 s, so a seconds-long test run shows some
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
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
        assert run.data.tags["mlflow.source.git.commit"] == "c0ffee" * 6
        (data,) = run.inputs.dataset_inputs  # lineage: the prepared data, by its hash
        assert data.dataset.name == "blobs"
        assert data.dataset.digest == run.data.tags["excon.data_hash"][:36]
        assert json.loads(data.dataset.source)["uri"] == str(prepared.resolve())
    pre = children["pretrain-supcon"]
    weights = workdir / "runs" / "animals" / "supcon" / "seed0" / "model.safetensors"
    assert pre.data.tags["excon.model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    system = [k for k in pre.data.metrics if k.startswith("system/")]
    if importlib.util.find_spec("psutil") is not None:  # MLflow's monitor needs it
        assert "system/cpu_utilization_percentage" in system, sorted(pre.data.metrics)
    assert not [k for k in children["probe-supcon"].data.metrics if k.startswith("system/")]
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
    assert (workdir / "runs" / "animals" / "ce" / "seed0" / "model.safetensors").is_file()
    assert "log_artifacts failed, results kept on disk only" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# under DVC: which store a stage uses, and whether it runs in an experiment


def dvc_stage_env(stage_dir, run_env=None) -> dict:
    """The environment DVC gives a stage command (its own prepare_kwargs, stage in `stage_dir`)."""
    from types import SimpleNamespace

    from dvc.stage.run import prepare_kwargs

    stage = SimpleNamespace(
        wdir=str(stage_dir), repo=SimpleNamespace(root_dir=str(stage_dir)), addressing="register"
    )
    return prepare_kwargs(stage, run_env=run_env)["env"]


def queued_experiment(tmp_path):
    """(repo, its copy) as `dvc exp run --queue` lays them out: the copy under
    .dvc/tmp/exps/<mkdtemp>; the stash's run_env (queue/base.py:_stash_exp) names the repo."""
    from dvc.env import DVC_EXP_BASELINE_REV, DVC_EXP_NAME, DVC_ROOT
    from dvc.repo.experiments.utils import EXEC_TMP_DIR

    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / EXEC_TMP_DIR / "tmpq8x1ab"
    copy.mkdir(parents=True)
    run_env = {DVC_EXP_BASELINE_REV: "0" * 40, DVC_EXP_NAME: "urban-sash", DVC_ROOT: str(repo)}
    return repo, copy, dvc_stage_env(copy, run_env)


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def use_env(monkeypatch, env: dict) -> None:
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        if var in env:
            monkeypatch.setenv(var, env[var])


def test_a_queued_experiment_uses_the_repositorys_store(tmp_path, monkeypatch, clean_env):
    from excon.config import load_config
    from excon.tracking import stage_run, tracking_uri

    repo, copy, env = queued_experiment(tmp_path)
    assert env["DVC_ROOT"] == str(repo)  # DVC keeps the stash's root over the copy's own
    use_env(monkeypatch, env)
    monkeypatch.chdir(copy)
    cfg = load_config(None, ["tracking.experiment=queued"])
    assert tracking_uri(cfg) == f"sqlite:///{repo.resolve()}/mlflow.db"
    with stage_run(cfg, "probe", "ce") as run:
        run.log_metrics({"test/top1": 0.5})
        run.log_artifact(write(copy / "note.txt"))
    assert (repo / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
    assert not (copy / "mlruns").exists()  # artifacts beside the store, not in the copy
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    (logged,) = mlflow.search_runs(experiment_names=["queued"], output_format="list")
    assert logged.data.metrics["test/top1"] == 0.5
    assert logged.info.artifact_uri.startswith((repo / "mlruns").as_uri())


def write(path):
    path.write_text("kept\n")
    return path


def test_which_store_a_stage_uses(tmp_path, monkeypatch, clean_env):
    from excon.config import load_config
    from excon.tracking import anchor_sqlite, dvc_experiment, tracking_uri

    default = load_config(None)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(default) == "sqlite:///mlflow.db" and dvc_experiment() is None
    use_env(monkeypatch, dvc_stage_env(tmp_path))  # plain `dvc repro`: DVC_ROOT = the repo
    assert tracking_uri(default) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert dvc_experiment() is None  # ...and no experiment
    for given in ("sqlite:////abs/m.db", "http://mlflow:5000"):
        assert tracking_uri(load_config(None, [f"tracking.uri={given}"])) == given
    assert anchor_sqlite("sqlite:///:memory:", tmp_path) == "sqlite:///:memory:"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db")
    assert tracking_uri(default) == f"sqlite:///{tmp_path.resolve()}/stores/team.db"
    for var, value in queued_experiment(tmp_path)[2].items():
        if var.startswith("DVC_EXP"):
            monkeypatch.setenv(var, value)
    assert dvc_experiment() == "urban-sash"


def test_our_names_are_dvcs():
    import dvc.env

    from excon import tracking

    assert tracking.DVC_ROOT_ENV == dvc.env.DVC_ROOT
    assert tracking.DVC_EXP_NAME_ENV == dvc.env.DVC_EXP_NAME
    assert tracking.DVC_EXP_BASELINE_ENV == dvc.env.DVC_EXP_BASELINE_REV
