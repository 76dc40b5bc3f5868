"""evaluate_robustness: accuracy and calibration under FGSM and PGD attacks."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate_robustness(
    config: str,
    method: str,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    plots: Output[HTML],
) -> None:
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config
    from excon.plots import html_gallery

    cfg = loads_config(config, [f"method.name={method}"])
    out = Path(evaluation.path)
    sources = [Path(model.path), Path(probe_head.path)]
    result = stages.evaluate_part(cfg, Path(dataset.path), sources, "robustness", out)
    for key, value in stages.numeric(result).items():
        metrics.log_metric(key, value)
    pngs = sorted(out.glob("*.png"))
    Path(plots.path).write_text(html_gallery(f"{method}: robustness", pngs))
