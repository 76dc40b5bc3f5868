"""The end of a pipeline run: what its exit-handler task (components/finish_run) does.

KFP runs the exit task whatever became of the run, handing it `dsl.PipelineTaskFinalStatus`.
It ends the run's MLflow parent (start-tracking leaves it RUNNING) with the status that matches,
and deletes the training jobs this run created that are still running: a cancelled run's
launcher pod gets SIGTERM and deletes its job itself, and the job is owned by the run's Argo
Workflow, but a launcher killed hard (node lost, OOM) or a workflow kept after failure would
leave a job holding GPUs until its deadline.
"""

from __future__ import annotations

import sys
from typing import Any

from excon.config import Config

# KFP's final task states (PipelineTaskFinalStatus.state) -> MLflow's RunStatus names. KFP
# spells a cancelled run CANCELED (v2 API) or CANCELLED (some drivers); anything unknown is a
# failure rather than a success.
MLFLOW_STATUS = {
    "SUCCEEDED": "FINISHED",
    "FAILED": "FAILED",
    "CANCELED": "KILLED",
    "CANCELLED": "KILLED",
}
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Every training job this project launches carries the pipeline run it belongs to.
RUN_LABEL = "excon.io/pipeline-run"


def mlflow_status(state: str) -> str:
    return MLFLOW_STATUS.get(state.upper(), "FAILED")


def run_label(run_id: str) -> str:
    """`run_id` as a label value (<= 63 characters of [A-Za-z0-9._-], alphanumeric at the ends)."""
    value = "".join(c if c.isalnum() or c in "._-" else "-" for c in run_id)[-63:]
    return value.strip("._-") or "none"


def finished(job: dict) -> bool:
    """Whether a job's conditions say it is over (PyTorchJob and TrainJob both use
    Succeeded / Failed conditions; a TrainJob's suspended or created job is not over)."""
    conditions = job.get("status", {}).get("conditions") or []
    return any(
        c.get("type") in ("Succeeded", "Failed", "Complete") and c.get("status") == "True"
        for c in conditions
    )


def delete_running_jobs(
    api: Any, namespace: str, run_id: str, kinds: list[tuple[str, str, str]]
) -> list[str]:
    """Delete the jobs labelled with `run_id` that have not finished; `kinds` are (group,
    version, plural). Returns `<plural>/<name>` of each deleted job. A kind whose CRD is not
    installed (404) is skipped."""
    deleted = []
    selector = f"{RUN_LABEL}={run_label(run_id)}"
    for group, version, plural in kinds:
        try:
            found = api.list_namespaced_custom_object(
                group, version, namespace, plural, label_selector=selector
            )
        except Exception as e:
            if getattr(e, "status", None) == 404:
                continue
            raise
        for job in found.get("items", []):
            if finished(job):
                continue
            name = job["metadata"]["name"]
            # Foreground: the job's pods go before it does, so its GPUs are free when we return.
            api.delete_namespaced_custom_object(
                group, version, namespace, plural, name, propagation_policy="Foreground"
            )
            deleted.append(f"{plural}/{name}")
    return deleted


def finish(
    cfg: Config,
    state: str,
    error: str = "",
    run_id: str = "",
    jobs: tuple[Any, str, list[tuple[str, str, str]]] | None = None,
) -> dict:
    """End the pipeline run `run_id`: its MLflow parent gets the status of KFP's `state`
    (tagged with `error`), and with `jobs` = (CustomObjectsApi, namespace, kinds) its training
    jobs still running are deleted. Both are attempted even when one fails; the first failure
    is raised afterwards, so the exit task fails visibly."""
    from excon import tracking

    status = mlflow_status(state)
    result: dict = {"state": state, "mlflow_status": status, "parent": None, "deleted": []}
    failures: list[Exception] = []
    try:
        result["parent"] = tracking.end_parent(cfg, status, error if status != "FINISHED" else "")
    except Exception as e:
        print(f"[finish] could not end the MLflow parent run: {e}", file=sys.stderr)
        failures.append(e)
    if jobs is not None and run_id:
        api, namespace, kinds = jobs
        try:
            result["deleted"] = delete_running_jobs(api, namespace, run_id, kinds)
        except Exception as e:
            print(f"[finish] could not delete the run's training jobs: {e}", file=sys.stderr)
            failures.append(e)
    if failures:
        raise failures[0]
    return result
