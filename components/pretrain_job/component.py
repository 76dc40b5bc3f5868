"""pretrain_job: pretrain one method on several GPUs or nodes, as a PyTorchJob.

The pipeline uses this instead of `pretrain` when compiled with nodes x gpus > 1. The task itself
needs no GPU: it stages the inputs in S3, creates the job from the compiled template, waits for
it and hands the trained run on as its Model artifact, exactly as `pretrain` would.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def pretrain_job(
    config: str,
    method: str,
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    job_manifest: str,
    staging_url: str,
    node_selector: dict,
    tolerations: list,
    namespace: str = "",
) -> None:
    import json
    import os
    from pathlib import Path

    from excon import stages
    from pipelines import pytorchjob

    summary = pytorchjob.launch(
        json.loads(job_manifest),
        config,
        method,
        Path(dataset.path),
        Path(model.path),
        staging_url,
        os.environ.get("EXCON_PIPELINE_RUN", ""),
        node_selector,
        tolerations,
        namespace=namespace,
    )
    (Path(model.path) / "checkpoint.pt").unlink(missing_ok=True)
    model.metadata.update({"method": method, "pytorchjob": True})
    for key, value in stages.numeric(summary).items():
        metrics.log_metric(key, value)
