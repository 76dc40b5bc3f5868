"""report: the methods side by side (mean ± std over seeds), a table and plots."""

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
    ce_calibration: Input[Artifact] = None,
    ce_robustness: Input[Artifact] = None,
    ce_explanations: Input[Artifact] = None,
    supcon_calibration: Input[Artifact] = None,
    supcon_robustness: Input[Artifact] = None,
    supcon_explanations: Input[Artifact] = None,
    excon_calibration: Input[Artifact] = None,
    excon_robustness: Input[Artifact] = None,
    excon_explanations: Input[Artifact] = None,
) -> None:
    """The methods side by side. Inputs are the evaluations of each method the pipeline
    trained (the others stay unset); a method is reported when all three of its evaluations
    are given.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        table: the comparison table (report.md).
        summary: report.md, report.json and the figures.
        plots: the figures as one HTML page.
        ce_calibration: ... excon_explanations: each method's three evaluations.
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config
    from excon.plots import html_gallery

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, settings)
    given = {
        ("ce", "calibration"): ce_calibration,
        ("ce", "robustness"): ce_robustness,
        ("ce", "explanations"): ce_explanations,
        ("supcon", "calibration"): supcon_calibration,
        ("supcon", "robustness"): supcon_robustness,
        ("supcon", "explanations"): supcon_explanations,
        ("excon", "calibration"): excon_calibration,
        ("excon", "robustness"): excon_robustness,
        ("excon", "explanations"): excon_explanations,
    }
    evaluations: dict[str, dict[str, Path]] = {}
    for (method, part), artifact in given.items():
        if artifact is not None:
            evaluations.setdefault(method, {})[part] = Path(artifact.path)
    complete = {m: parts for m, parts in evaluations.items() if len(parts) == 3}
    if not complete:
        raise ValueError(f"report: no method has all three evaluations (got {evaluations})")
    out = Path(summary.path)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [stages.link_run(Path(tmp) / m, evals=parts) for m, parts in complete.items()]
        stages.report(cfg, runs, out)
    shutil.copy2(out / "report.md", table.path)
    Path(plots.path).write_text(html_gallery("excon: methods compared", sorted(out.glob("*.png"))))
