"""The pipeline's exit handler (components/finish_run, pipelines/lifecycle.py) against a real
MLflow server: the parent run start-tracking leaves RUNNING ends with the pipeline's final
status, only this pipeline run's parent is touched, and the run's training jobs that are still
running are deleted (a stand-in for the Kubernetes API: no cluster here)."""

import mlflow
import pytest
import yaml
from kfp import dsl

from components.finish_run.component import finish_run
from components.start_tracking.component import start_tracking
from excon.config import load_config
from excon.tracking import PIPELINE_RUN_ENV
from pipelines import lifecycle
from pipelines.excon_pipeline import RUN_SETTINGS_ENV, run_settings


def final(state: str, message: str = "") -> dsl.PipelineTaskFinalStatus:
    return dsl.PipelineTaskFinalStatus(
        state=state,
        pipeline_job_resource_name="projects/p/pipelineJobs/wf",
        pipeline_task_name="exit-handler-1",
        error_code=None if state == "SUCCEEDED" else 1,
        error_message=message or None,
    )


def test_the_exit_task_ends_the_parent_with_the_pipelines_status(mlflow_server, monkeypatch):
    url, _, _ = mlflow_server
    cfg = load_config(None, ["tracking.enabled=true", f"tracking.uri={url}"])
    monkeypatch.setenv(RUN_SETTINGS_ENV, run_settings(cfg))
    client = mlflow.MlflowClient(tracking_uri=url)

    def pipeline_run(name: str) -> str:
        monkeypatch.setenv(PIPELINE_RUN_ENV, name)
        parent = start_tracking.python_func(config=yaml.safe_dump(cfg.to_dict()))
        assert client.get_run(parent).info.status == "RUNNING"  # while the pipeline runs
        return parent

    other = pipeline_run("wf-other")
    expected = {
        "SUCCEEDED": "FINISHED",
        "FAILED": "FAILED",
        "CANCELED": "KILLED",
        "SYSTEM_ERROR": "FAILED",
    }
    for state, status in expected.items():
        parent = pipeline_run(f"wf-{state.lower()}")
        message = "" if state == "SUCCEEDED" else "pretrain-excon-seed0: exit code 1"
        out = finish_run.python_func(status=final(state, message), job_kinds=[])
        run = client.get_run(parent)
        assert (run.info.status, run.info.end_time is not None) == (status, True), state
        assert run.data.tags.get("excon.pipeline_error", "") == message, state
        assert f'"parent": "{parent}"' in out
    assert client.get_run(other).info.status == "RUNNING"  # another pipeline run's parent


class FakeJobs:
    """CustomObjectsApi's list/delete of namespaced custom objects, with label selectors."""

    def __init__(self, jobs: list[dict]) -> None:
        self.jobs, self.deleted = jobs, []

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector):
        key, _, value = label_selector.partition("=")
        found = [
            j
            for j in self.jobs
            if j["plural"] == plural and j["metadata"]["labels"].get(key) == value
        ]
        return {"items": found}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        assert kw == {"propagation_policy": "Foreground"}  # pods gone before we return
        self.deleted.append(f"{plural}/{name}")


def job(name: str, run: str, condition: str | None = None, plural: str = "trainjobs") -> dict:
    status = {"conditions": [{"type": condition, "status": "True"}]} if condition else {}
    labels = {lifecycle.RUN_LABEL: lifecycle.run_label(run)}
    return {"plural": plural, "metadata": {"name": name, "labels": labels}, "status": status}


def test_the_runs_unfinished_jobs_are_deleted_and_nothing_else():
    api = FakeJobs([
        job("a", "wf-1"),  # running: deleted
        job("b", "wf-1", "Complete"),  # TrainJob finished
        job("c", "wf-1", "Failed"),
        job("d", "wf-2"),  # another pipeline run's
        job("e", "wf-1", plural="pytorchjobs"),
    ])  # fmt: skip
    cfg = load_config(None, ["tracking.enabled=false"])
    kinds = [
        ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
        ("kubeflow.org", "v1", "pytorchjobs"),
    ]
    result = lifecycle.finish(cfg, "CANCELED", "cancelled", "wf-1", (api, "ns", kinds))
    assert result["deleted"] == api.deleted == ["trainjobs/a", "pytorchjobs/e"]
    assert result["mlflow_status"] == "KILLED" and result["parent"] is None


def test_a_missing_crd_is_skipped_and_an_api_error_fails_the_exit_task():
    class Missing(FakeJobs):
        def list_namespaced_custom_object(self, *args, **kwargs):
            error = RuntimeError("not found")
            error.status = 404 if args[3] == "pytorchjobs" else 403
            raise error

    cfg = load_config(None, ["tracking.enabled=false"])
    api = Missing([])
    assert (
        lifecycle.delete_running_jobs(api, "ns", "wf", [("kubeflow.org", "v1", "pytorchjobs")])
        == []
    )
    with pytest.raises(RuntimeError, match="not found"):
        lifecycle.finish(cfg, "FAILED", "", "wf", (api, "ns", [("g", "v1", "trainjobs")]))


def test_label_values_are_valid_kubernetes_labels():
    assert lifecycle.run_label("excon-study-abc12") == "excon-study-abc12"
    long = lifecycle.run_label("x" * 80 + "/y")
    assert len(long) <= 63 and long[-1].isalnum()
