"""start_tracking: the MLflow parent run that groups one pipeline run's stage runs."""

from kfp import dsl

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def start_tracking(config: str) -> str:
    """Returns the parent run id ('' when tracking is off); fails fast when MLflow is
    unreachable, before any GPU time is spent. The run is tagged with $EXCON_PIPELINE_RUN, by
    which the pipeline's other tasks find it, and stays RUNNING until the pipeline's exit
    handler (finish_run) ends it with the pipeline's final status."""
    from excon.config import loads_config
    from excon.tracking import start_parent

    cfg = loads_config(config)
    return start_parent(cfg, keep_running=True) if cfg.tracking.enabled else ""
