"""deploy: serve the promoted model version behind the KServe InferenceService."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def deploy(
    model_uri: str,
    deployed: Output[Markdown],
    image: str = DEFAULT_IMAGE,
    namespace: str = "excon",
    service_name: str = "excon",
    gpus: int = 0,
    canary_traffic_percent: int = 0,
) -> None:
    """Create or patch the InferenceService so that it serves `model_uri`, the version this
    run's registers promoted last (pinned, models:/<name>/<version>: every promotion is a new
    KServe revision). The pipeline runs it under dsl.If on that answer being non-empty.

    Args:
        model_uri: the last register task's answer: `models:/<name>/<version>`, or "" (nothing
            promoted: nothing is deployed; only reached when the task is run by hand).
        deployed: what was done (create / patch / unchanged / nothing) and the body's model URI.
        image: the project image the predictor runs (`excon serve`).
        namespace: the InferenceService's namespace (its Secrets excon-mlflow and excon-s3
            must be there; infra/k8s/serving/base/rbac.yaml lets the task write it).
        service_name: the InferenceService's name.
        gpus: GPUs for the predictor (0: CPU).
        canary_traffic_percent: 1..99 sends that share of traffic to the new version and the
            rest to the previous one; 0 (or 100) rolls it out to all traffic.
    """
    import re
    from pathlib import Path

    from excon.serve.deploy import apply, inference_service

    if not model_uri:
        Path(deployed.path).write_text("nothing deployed: no version promoted\n")
        deployed.metadata.update({"action": "none"})
        return
    pinned = re.fullmatch(r"models:/[^/@]+/(\d+)", model_uri)
    if pinned is None:  # an alias would let a later promotion change a running revision
        raise ValueError(f"deploy: expected models:/<name>/<version>, got {model_uri!r}")
    canary = canary_traffic_percent if 0 < canary_traffic_percent < 100 else None
    body = inference_service(
        model_uri,
        name=service_name,
        namespace=namespace,
        image=image,
        gpus=gpus,
        canary_traffic_percent=canary,
        model_version=pinned.group(1),
    )
    action = apply(body)
    share = f", canary {canary} %" if canary else ""
    text = f"InferenceService {namespace}/{service_name}: {action}, serving {model_uri}{share}\n"
    Path(deployed.path).write_text(text)
    deployed.metadata.update({"action": action, "model_uri": model_uri})
