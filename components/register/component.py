"""register: a new model version (@challenger) behind the promotion gate (@champion)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def register(
    params: str,
    code_version: str,
    method: str,
    seed: int,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Input[Model],
    calibration: Input[Artifact],
    robustness: Input[Artifact],
    explanations: Input[Artifact],
    report: Input[Markdown],
    decision: Output[Markdown],
) -> None:
    """Register one run and gate it against the registry's current champion. Never cached (it
    changes the registry), but handed what the cached stages are, so that it reads as they do.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code).
        method: ce | supcon | excon.
        seed: the run's training seed (train.seed).
        dataset: the prepared dataset (its hash is the version's lineage).
        model: the pretrained run.
        probe_head: the run's linear probe.
        calibration: the run's calibration evaluation.
        robustness: the run's robustness evaluation.
        explanations: the run's explanation evaluation.
        report: the comparison; it only orders registration after it (as in dvc.yaml).
        decision: the version and the gate's decision with its reasons.
    """
    import json
    import os
    import tempfile
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, [*settings, f"method.name={method}", f"train.seed={seed}"])
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
