"""finish_run: the pipeline's exit handler; ends the MLflow parent run with the run's status."""

from kfp import dsl

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def finish_run(status: dsl.PipelineTaskFinalStatus, job_kinds: list) -> str:
    """Runs after the study whatever became of it (dsl.ExitHandler): ends the MLflow parent
    run that start-tracking left RUNNING with the pipeline's final status (SUCCEEDED ->
    FINISHED, FAILED -> FAILED, CANCELED -> KILLED) and deletes the training jobs of this
    pipeline run that are still running (pipelines.lifecycle). Returns the outcome as JSON.

    Args:
        status: the pipeline's final status, filled in by KFP.
        job_kinds: the [group, version, plural] of the training jobs the run may have created;
            empty when it launches none (one GPU per pretrain task), or off a cluster.
    """
    import json
    import os
    from pathlib import Path

    from excon.config import loads_config
    from pipelines import lifecycle

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config("{}", settings)
    run_id = os.environ.get("EXCON_PIPELINE_RUN", "")
    jobs = None
    if job_kinds:
        from kubernetes import client, config

        config.load_incluster_config()
        namespace = Path(lifecycle.NAMESPACE_FILE).read_text().strip()
        jobs = (client.CustomObjectsApi(), namespace, [tuple(k) for k in job_kinds])
    error = status.error_message or ""
    result = lifecycle.finish(cfg, status.state, error, run_id, jobs)
    print(json.dumps(result))
    return json.dumps(result)
