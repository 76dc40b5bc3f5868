"""evaluate_calibration: probe and online-head accuracy; calibration, clean and under shift."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate_calibration(
    params: str,
    code_version: str,
    method: str,
    seed: int,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    plots: Output[HTML],
) -> None:
    """Evaluate one run's encoder and probe: calibration.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        method: ce | supcon | excon.
        seed: the run's training seed (train.seed).
        dataset: the prepared dataset.
        model: the pretrained run (encoder and online head).
        probe_head: the linear probe on the frozen encoder.
        evaluation: metrics.json and the figures.
        metrics: the numeric metrics, for the KFP UI.
        plots: the figures as one HTML page.
    """
    import json
    import os
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config
    from excon.plots import html_gallery

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, [*settings, f"method.name={method}", f"train.seed={seed}"])
    out = Path(evaluation.path)
    sources = [Path(model.path), Path(probe_head.path)]
    result = stages.evaluate_part(cfg, Path(dataset.path), sources, "calibration", out)
    for key, value in stages.numeric(result).items():
        metrics.log_metric(key, value)
    pngs = sorted(out.glob("*.png"))
    Path(plots.path).write_text(html_gallery(f"{method}: calibration", pngs))
