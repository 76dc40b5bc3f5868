"""report: the methods side by side over every seed (mean ± std, intervals), a table and plots."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def report(
    params: str,
    code_version: str,
    table: Output[Markdown],
    summary: Output[Artifact],
    plots: Output[HTML],
    ce_calibration: Input[list[Artifact]] = None,
    ce_robustness: Input[list[Artifact]] = None,
    ce_explanations: Input[list[Artifact]] = None,
    supcon_calibration: Input[list[Artifact]] = None,
    supcon_robustness: Input[list[Artifact]] = None,
    supcon_explanations: Input[list[Artifact]] = None,
    excon_calibration: Input[list[Artifact]] = None,
    excon_robustness: Input[list[Artifact]] = None,
    excon_explanations: Input[list[Artifact]] = None,
) -> None:
    """The methods side by side. Inputs are, per method the pipeline trained (the others stay
    unset) and per evaluation part, that part's evaluations of every seed (dsl.Collected over
    the pipeline's seed loop), paired into runs by the seed in their metadata; a method is
    reported when all three of its parts are given.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        table: the comparison table (report.md).
        summary: report.md, report.json and the figures.
        plots: the figures as one HTML page.
        ce_calibration: ce's calibration evaluations, one per seed; likewise ce_robustness ...
            excon_explanations for each method and part.
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from components.runs import pair
    from excon import stages
    from excon.config import loads_config
    from excon.plots import html_gallery

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, settings)
    given = {
        "ce": (ce_calibration, ce_robustness, ce_explanations),
        "supcon": (supcon_calibration, supcon_robustness, supcon_explanations),
        "excon": (excon_calibration, excon_robustness, excon_explanations),
    }
    parts = ("calibration", "robustness", "explanations")
    complete = {
        m: dict(zip(parts, lists, strict=True)) for m, lists in given.items() if None not in lists
    }
    if not complete:
        got = {
            m: [p for p, a in zip(parts, lists, strict=True) if a is not None]
            for m, lists in given.items()
        }
        raise ValueError(f"report: no method has all three evaluations (got {got})")
    out = Path(summary.path)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            stages.link_run(
                Path(tmp) / method / f"seed{seed}", evals={p: Path(a.path) for p, a in run.items()}
            )
            for method, lists in complete.items()
            for seed, run in pair(lists, f"report: {method}").items()
        ]
        stages.report(cfg, runs, out)
    shutil.copy2(out / "report.md", table.path)
    Path(plots.path).write_text(html_gallery("excon: methods compared", sorted(out.glob("*.png"))))
