"""evaluate: one part of a run's evaluation (calibration | robustness | explanations).

One component for the three parts: the pipeline names a task per part (`evaluate-<part>-<method>`)
and hands each its own part's parameter slice and code version, so a part's cache fingerprint
changes only with what that part computes.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate(
    params: str,
    code_version: str,
    part: str,
    method: str,
    seed: int,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    plots: Output[HTML],
) -> None:
    """Evaluate one run's encoder and probe on one part.

    Args:
        params: the part's slice of the study parameters (JSON, pipelines.dag.stage_params of
            evaluate_<part>); every other key takes its default or, for how the task runs
            (device, tracking, storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the part runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        part: calibration (accuracy, calibration clean and under shift), robustness (FGSM and
            PGD) or explanations (Grad-CAM drop, increase, deletion/insertion, pointing).
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
    result = stages.evaluate_part(cfg, Path(dataset.path), sources, part, out)
    # the report and register tasks pair a run's artifacts by it (dsl.Collected has no order)
    evaluation.metadata.update({"method": method, "seed": seed, "part": part})
    for key, value in stages.numeric(result).items():
        metrics.log_metric(key, value)
    pngs = sorted(out.glob("*.png"))
    Path(plots.path).write_text(html_gallery(f"{method}: {part}", pngs))
