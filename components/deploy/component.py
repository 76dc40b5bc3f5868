"""deploy: serve the promoted model version behind the KServe InferenceService."""

from kfp import dsl
from kfp.dsl import Input, Markdown, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def deploy(
    decision: Input[Markdown],
    deployed: Output[Markdown],
    image: str = DEFAULT_IMAGE,
    namespace: str = "excon",
    service_name: str = "excon",
    gpus: int = 0,
    canary_traffic_percent: int = 0,
) -> None:
    """Create or patch the InferenceService so that it serves the version `register` promoted
    (models:/<name>/<version>, pinned: every promotion is a new KServe revision). Meant to run
    under dsl.If on the gate's decision; a decision other than `promoted` deploys nothing.

    Args:
        decision: the register task's output: its metadata holds `versions`, a list of
            {name, version, decision} in registration order (or one such dict at top level);
            the last promoted one is the champion.
        deployed: what was done (create / patch / unchanged / nothing) and the body's model URI.
        image: the project image the predictor runs (`excon serve`).
        namespace: the InferenceService's namespace (its Secrets excon-mlflow and excon-s3
            must be there; infra/k8s/serving/base/rbac.yaml lets the task write it).
        service_name: the InferenceService's name.
        gpus: GPUs for the predictor (0: CPU).
        canary_traffic_percent: 1..99 sends that share of traffic to the new version and the
            rest to the previous one; 0 (or 100) rolls it out to all traffic.
    """
    from pathlib import Path

    from excon.serve.deploy import apply, inference_service

    versions = decision.metadata.get("versions") or [decision.metadata]
    promoted = [v for v in versions if v.get("decision") == "promoted"]
    if not promoted:
        said = ", ".join(str(v.get("decision")) for v in versions)
        Path(deployed.path).write_text(f"nothing deployed: no version promoted ({said})\n")
        deployed.metadata.update({"action": "none"})
        return
    meta = promoted[-1]  # registered one after another: the last promoted is the champion
    uri = f"models:/{meta['name']}/{int(meta['version'])}"
    canary = canary_traffic_percent if 0 < canary_traffic_percent < 100 else None
    body = inference_service(
        uri,
        name=service_name,
        namespace=namespace,
        image=image,
        gpus=gpus,
        canary_traffic_percent=canary,
        model_version=str(meta["version"]),
    )
    action = apply(body)
    share = f", canary {canary} %" if canary else ""
    text = f"InferenceService {namespace}/{service_name}: {action}, serving {uri}{share}\n"
    Path(deployed.path).write_text(text)
    deployed.metadata.update({"action": action, "model_uri": uri})
