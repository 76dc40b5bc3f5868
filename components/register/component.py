"""register: a new model version (@challenger) behind the promotion gate (@champion)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def register(
    config: str,
    method: str,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Input[Model],
    calibration: Input[Artifact],
    robustness: Input[Artifact],
    explanations: Input[Artifact],
    report: Input[Markdown],
    decision: Output[Markdown],
) -> None:
    """`report` orders registration after the comparison (as in dvc.yaml); the gate itself
    compares with the registry's current champion."""
    import tempfile
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    cfg = loads_config(config, [f"method.name={method}"])
    evals = {
        "calibration": Path(calibration.path),
        "robustness": Path(robustness.path),
        "explanations": Path(explanations.path),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sources = [Path(model.path), Path(probe_head.path)]
        run = stages.link_run(Path(tmp) / "run", *sources, evals=evals, copy=True)
        result = stages.register(cfg, run, Path(dataset.path), source=model.uri)
    lines = [f"# {result['name']} version {result['version']}: {result['decision']}", ""]
    lines += [f"- {reason}" for reason in result["reasons"]]
    Path(decision.path).write_text("\n".join(lines) + "\n")
    decision.metadata.update({k: result[k] for k in ("name", "version", "decision")})
