"""probe: the linear probe on the frozen encoder, selected on val."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def probe(
    params: str,
    code_version: str,
    method: str,
    seed: int,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """Train the linear probe on one run's frozen encoder.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        method: ce | supcon | excon.
        seed: the run's training seed (train.seed).
        dataset: the prepared dataset.
        model: the pretrained run.
        probe_head: the probe's weights and metrics.json.
        metrics: the numeric metrics, for the KFP UI.
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, [*settings, f"method.name={method}", f"train.seed={seed}"])
    out = Path(probe_head.path)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = stages.link_run(Path(tmp) / "run", Path(model.path))
        result = stages.probe(cfg, Path(dataset.path), run, out / "metrics.json")
        shutil.copy2(run / "probe_head.safetensors", out / "probe_head.safetensors")
    probe_head.metadata.update({"method": method, "seed": seed})  # pairs runs downstream
    for key, value in stages.numeric(result).items():
        metrics.log_metric(key, value)
