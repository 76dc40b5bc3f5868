"""prepare: the dataset named by data.dataset, in the prepared on-disk format."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def prepare(params: str, code_version: str, dataset: Output[Dataset]) -> None:
    """Read (or download) the dataset and write it in the prepared format.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code); not read
            here: an input so that KFP's cache fingerprint changes with the image's code.
        dataset: the prepared splits and their manifest.
    """
    import json
    import os
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    cfg = loads_config(params, settings)
    manifest = stages.prepare(cfg, Path(dataset.path))
    dataset.metadata.update(
        {
            "dataset": manifest["dataset"],
            "num_classes": manifest["num_classes"],
            **{f"{split}_images": n for split, n in manifest["splits"].items()},
        }
    )
