"""start_tracking: the MLflow parent run that ties one pipeline run's stage runs together."""

import os

import mlflow
import pytest
import yaml
from kfp.dsl import Metrics, Model

from components.probe.component import probe
from components.start_tracking.component import start_tracking
from excon.config import Config
from excon.tracking import PARENT_ENV, PIPELINE_RUN_ENV, TrackingError


def config_text(cfg: Config) -> str:
    """The whole study, as the pipeline hands start-tracking (uncached) its config."""
    return yaml.safe_dump(cfg.to_dict())


def test_creates_a_running_parent_run(make_config, tracking_on, mlflow_store):
    """RUNNING until the pipeline's exit handler ends it (tests/storage/test_finish_run.py)."""
    run_id = start_tracking.python_func(config=config_text(make_config(*tracking_on)))
    run = mlflow.MlflowClient(tracking_uri=mlflow_store).get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "study-animals"  # data.dataset keeps its default
    assert run.data.tags["excon.stage"] == "pipeline"
    assert "mlflow.parentRunId" not in run.data.tags


def test_stage_runs_hang_under_the_parent(
    make_config,
    task,
    use_settings,
    tracking_on,
    mlflow_store,
    dataset,
    pretrained,
    output,
    monkeypatch,
):
    """Tasks find the parent by the pipeline run's name ($EXCON_PIPELINE_RUN, from the pod's
    workflow label on a cluster), not through an input that would defeat caching."""
    study = make_config(*tracking_on)
    use_settings(study)  # the stage tasks' tracking settings come from $EXCON_RUN_SETTINGS
    monkeypatch.setenv(PIPELINE_RUN_ENV, "excon-study-abc12")
    parent = start_tracking.python_func(config=config_text(study))

    def run_probe(name: str) -> Metrics:
        metrics = output(Metrics, f"{name}_metrics")
        probe.python_func(
            **task("probe", study),
            dataset=dataset,
            model=pretrained[0],
            probe_head=output(Model, name),
            metrics=metrics,
        )
        return metrics

    metrics = run_probe("child")
    monkeypatch.setenv(PIPELINE_RUN_ENV, "excon-study-other")  # another run: no parent of it
    run_probe("alone")
    assert PARENT_ENV not in os.environ  # found per stage run, never left behind

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("excon").experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and len(children) == 1
    child = children[0]
    assert child.data.tags["excon.stage"] == "probe"
    assert child.data.tags["excon.method"] == "excon"
    assert child.data.metrics["test/top1"] == metrics.metadata["test/top1"]
    alone = [r for r in runs.values() if r.info.run_id not in (parent, child.info.run_id)]
    assert "mlflow.parentRunId" not in alone[0].data.tags


def test_tracking_off_returns_no_id_and_writes_no_store(make_config, tmp_path):
    db = tmp_path / "off.db"
    study = make_config(f"tracking.uri=sqlite:///{db}")
    assert start_tracking.python_func(config=config_text(study)) == ""
    assert not db.exists()


def test_unreachable_server_fails_fast(make_config, free_port, monkeypatch, restore_mlflow_uri):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, no backoff
    uri = f"http://127.0.0.1:{free_port}"
    with pytest.raises(TrackingError, match=rf"{uri} is not usable.*tracking\.enabled=false"):
        start_tracking.python_func(
            config=config_text(make_config("tracking.enabled=true", f"tracking.uri={uri}"))
        )
