"""probe: the linear probe on the frozen encoder, selected on val."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def probe(
    config: str,
    method: str,
    dataset: Input[Dataset],
    model: Input[Model],
    probe_head: Output[Model],
    metrics: Output[Metrics],
) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    cfg = loads_config(config, [f"method.name={method}"])
    out = Path(probe_head.path)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = stages.link_run(Path(tmp) / "run", Path(model.path))
        result = stages.probe(cfg, Path(dataset.path), run, out / "metrics.json")
        shutil.copy2(run / "probe_head.safetensors", out / "probe_head.safetensors")
    for key, value in stages.numeric(result).items():
        metrics.log_metric(key, value)
