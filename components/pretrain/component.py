"""pretrain: one method (ce | supcon | excon) on the prepared dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def pretrain(
    params: str,
    code_version: str,
    method: str,
    seed: int,
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    checkpoint_url: str = "",
) -> None:
    """Pretrain one run. With `checkpoint_url` (s3://...), the checkpoint goes to
    <checkpoint_url>/<pipeline run>/<method> after every epoch and a retry of this task (a fresh
    pod, same pipeline run) resumes from it instead of starting over. Methods and pipeline runs
    never share a checkpoint, so one found there was trained with this task's parameters. It is
    deleted once the task has its model.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params
            with the method's keys); every other key takes its default or, for how the task
            runs (device, tracking, storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        method: ce | supcon | excon.
        seed: the run's training seed (train.seed).
        dataset: the prepared dataset.
        model: the trained run (weights, config, curves, figures).
        metrics: the run's summary, for the KFP UI.
        checkpoint_url: where retries resume from; empty: no checkpoint leaves the pod.
    """
    import json
    import os
    import sys
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, [*settings, f"method.name={method}", f"train.seed={seed}"])
    pipeline_run = os.environ.get("EXCON_PIPELINE_RUN", "")
    if checkpoint_url and not pipeline_run:
        print("checkpoint_url ignored: no pipeline run name to keep runs apart", file=sys.stderr)
        checkpoint_url = ""
    run = Path(model.path)
    url = f"{checkpoint_url.rstrip('/')}/{pipeline_run}/{method}"
    resumed = bool(checkpoint_url) and stages.restore_checkpoint(url, run)
    summary = stages.pretrain(
        cfg,
        Path(dataset.path),
        run,
        resume="auto" if resumed else False,
        on_epoch=(lambda _: stages.save_checkpoint(url, run)) if checkpoint_url else None,
    )
    (run / "checkpoint.pt").unlink(missing_ok=True)  # the run's scratch, not the model
    if checkpoint_url:
        stages.discard_scratch(url)  # complete: no retry will need it
    # the report and register tasks pair a run's artifacts by seed (dsl.Collected has no order)
    model.metadata.update({"method": method, "seed": seed, "resumed": resumed})
    for key, value in stages.numeric(summary).items():
        metrics.log_metric(key, value)
