"""pretrain_job: pretrain one method on several GPUs or nodes, as a Kubeflow Trainer TrainJob.

The pipeline uses this instead of `pretrain` when compiled with nodes x gpus > 1. The task itself
needs no GPU: it stages the inputs in S3, creates the job from the compiled template, waits for
it and hands the trained run on as its Model artifact, exactly as `pretrain` would.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def pretrain_job(
    params: str,
    code_version: str,
    method: str,
    seed: int,
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    job_manifest: str,
    staging_url: str,
    node_selector: dict,
    tolerations: list,
    namespace: str = "",
) -> None:
    """Pretrain one run as a TrainJob (pipelines/trainjob.py) and fetch it.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params
            with the method's keys); every other key takes its default or, for how the task
            runs (device, tracking, storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        method: ce | supcon | excon.
        seed: the run's training seed (train.seed).
        dataset: the prepared dataset, staged in S3 for the job's pods.
        model: the trained run rank 0 mirrored back.
        metrics: the run's summary, for the KFP UI.
        job_manifest: the TrainJob (JSON) rendered at compile time: nodes and GPUs per node.
        staging_url: s3://bucket/prefix where the job's inputs and outputs are staged.
        node_selector: the GPU pods' node selector.
        tolerations: the GPU pods' tolerations.
        namespace: the job's namespace; empty: this pod's.
    """
    import json
    import os
    from pathlib import Path

    import yaml

    from excon import stages
    from excon.config import loads_config
    from pipelines import trainjob

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, [*settings, f"method.name={method}", f"train.seed={seed}"])
    summary = trainjob.launch(
        json.loads(job_manifest),
        yaml.safe_dump(cfg.to_dict(), sort_keys=True),  # the job's pods read the whole Config
        method,
        Path(dataset.path),
        Path(model.path),
        staging_url,
        os.environ.get("EXCON_PIPELINE_RUN", ""),
        node_selector,
        tolerations,
        namespace=namespace,
        # the job's own deadline (activeDeadlineSeconds) ends it first; then this gives up
        timeout_s=json.loads(job_manifest)["spec"]["activeDeadlineSeconds"] + 600,
    )
    (Path(model.path) / "checkpoint.pt").unlink(missing_ok=True)
    model.metadata.update({"method": method, "seed": seed, "trainjob": True})
    for key, value in stages.numeric(summary).items():
        metrics.log_metric(key, value)
