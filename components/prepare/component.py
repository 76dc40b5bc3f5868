"""prepare: the dataset named by data.dataset, in the prepared on-disk format."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def prepare(config: str, dataset: Output[Dataset]) -> None:
    from pathlib import Path

    from excon import stages
    from excon.config import loads_config

    manifest = stages.prepare(loads_config(config), Path(dataset.path))
    dataset.metadata.update(
        {
            "dataset": manifest["dataset"],
            "num_classes": manifest["num_classes"],
            **{f"{split}_images": n for split, n in manifest["splits"].items()},
        }
    )
