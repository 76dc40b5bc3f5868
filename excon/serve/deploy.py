"""The KServe InferenceService that serves a registered model, and applying it to a cluster.

`inference_service` builds the body: the project image running `excon serve --model <uri>` as
a custom predictor, restricted like every pod of the project (non-root UID 10001, no
capabilities, read-only root filesystem, seccomp RuntimeDefault), MLflow and S3 settings from
the `excon-mlflow` / `excon-s3` Secrets, GPU optional. infra/k8s/serving/base/inferenceservice.yaml
is this body for the `@champion` alias (`python -m excon.serve.deploy > ...`; a test holds
them equal); the pipeline's deploy task pins the promoted *version*, so that each promotion
changes the spec and KServe rolls out a new revision.

Canary: with `canary_traffic_percent` P, KServe (Serverless mode) sends P % of the traffic to
the new revision and the rest to the last one that was ready; deploying again without it
(or `kubectl patch ... canaryTrafficPercent: 100`) moves all traffic to the new revision.

`apply` creates the InferenceService or merge-patches it when it differs, with the official
`kubernetes` client; `plan` is that decision, a pure function.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

GROUP, VERSION, PLURAL, KIND = (
    "serving.kserve.io",
    "v1beta1",
    "inferenceservices",
    "InferenceService",
)
DEFAULT_IMAGE = (
    "ghcr.io/excon-ml/excon:0.1.0"  # = components.DEFAULT_IMAGE (excon never imports kfp)
)
DEFAULT_NAME, DEFAULT_NAMESPACE, PORT, UID = "excon", "excon", 8080, 10001
CONTAINER = "kserve-container"  # the name KServe gives (and expects of) the predictor container
VERSION_ANNOTATION = "excon.io/model-version"


class DeployError(RuntimeError):
    """The cluster refused or could not be reached: one line saying which and why."""


def _container(model_uri: str, image: str, gpus: int) -> dict[str, Any]:
    resources = {"cpu": "2", "memory": "4Gi"}
    if gpus:
        resources["nvidia.com/gpu"] = gpus
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 10}
    return {
        "name": CONTAINER,
        "image": image,
        "command": ["excon"],
        "args": [
            "serve",
            "--model",
            model_uri,
            "--port",
            str(PORT),
            "--device",
            "cuda" if gpus else "cpu",
        ],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}],
        # MLFLOW_TRACKING_URI (+ credentials) and the S3 endpoint/keys the artifacts live behind
        "envFrom": [{"secretRef": {"name": "excon-mlflow"}}, {"secretRef": {"name": "excon-s3"}}],
        # the model is downloaded and loaded before the server listens: allow for that
        "startupProbe": {**probe, "failureThreshold": 30},
        "readinessProbe": probe,
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT},
            "periodSeconds": 20,
        },
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],  # MLflow's downloads
    }


def inference_service(
    model_uri: str,
    *,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    image: str = DEFAULT_IMAGE,
    gpus: int = 0,
    canary_traffic_percent: int | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """The InferenceService body serving `model_uri` (`models:/excon-<dataset>@champion` or a
    pinned `models:/excon-<dataset>/<version>`)."""
    if canary_traffic_percent is not None and not 0 <= canary_traffic_percent <= 100:
        raise ValueError(f"canary_traffic_percent {canary_traffic_percent}: expected 0..100")
    labels = {"app.kubernetes.io/name": "excon-serve", "app.kubernetes.io/part-of": "excon"}
    annotations = {"serving.kserve.io/enable-prometheus-scraping": "true"}
    if model_version is not None:
        annotations[VERSION_ANNOTATION] = str(model_version)
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(model_uri, image, gpus)],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "4Gi"}}],
    }
    if gpus:
        predictor["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        predictor["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    if canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


def _contains(current: Any, desired: Any) -> bool:
    """True when everything `desired` says is already in `current` (the API server adds
    defaults, so `current` may hold more)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            _contains(current.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(_contains(c, d) for c, d in zip(current, desired, strict=True))
        )
    return current == desired


def plan(current: dict | None, desired: dict) -> str:
    """`create` (none there), `unchanged` (it already says all the desired body says; a
    canary percentage left from the last rollout counts as a change) or `patch`."""
    if current is None:
        return "create"
    spec, meta = current.get("spec") or {}, current.get("metadata") or {}
    canary_left = "canaryTrafficPercent" in (spec.get("predictor") or {}) and (
        "canaryTrafficPercent" not in desired["spec"]["predictor"]
    )
    same = _contains(spec, desired["spec"]) and all(
        _contains(meta.get(k) or {}, desired["metadata"].get(k) or {})
        for k in ("labels", "annotations")
    )
    return "unchanged" if same and not canary_left else "patch"


def merge_patch(current: dict, desired: dict) -> dict:
    """The JSON merge patch (RFC 7386) taking `current` to `desired`'s spec and metadata:
    lists are replaced whole; a canary percentage the desired body drops is deleted (null)."""
    patch = {
        "metadata": {k: desired["metadata"][k] for k in ("labels", "annotations")},
        "spec": {"predictor": dict(desired["spec"]["predictor"])},
    }
    if "canaryTrafficPercent" in ((current.get("spec") or {}).get("predictor") or {}):
        patch["spec"]["predictor"].setdefault("canaryTrafficPercent", None)
    return patch


def _api() -> Any:
    import os

    from kubernetes import client, config

    try:
        config.load_incluster_config()  # a pipeline task: its service account
    except config.ConfigException:
        # a laptop: $KUBECONFIG or ~/.kube/config (read now: the client reads $KUBECONFIG
        # once, when it is imported)
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            config.load_kube_config(config_file=path)
        except (config.ConfigException, OSError) as e:
            raise DeployError(
                f"no Kubernetes cluster configured: not in a pod, {path}: {e}"
            ) from None
    return client.CustomObjectsApi()


def _why(e: Exception) -> str:
    status, reason = getattr(e, "status", None), getattr(e, "reason", None)
    text = f"HTTP {status} {reason}" if status else (str(e) or type(e).__name__)
    return " ".join(text.split())[:300]


def apply(body: dict, api: Any = None) -> str:
    """Create or merge-patch the InferenceService `body` describes; returns what was done
    (`create`, `patch` or `unchanged`)."""
    from kubernetes.client.exceptions import ApiException

    api = api or _api()
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    where = f"InferenceService {ns}/{name}"
    try:
        current = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise DeployError(f"{where}: cannot read it ({_why(e)})") from None
        current = None
    except Exception as e:  # urllib3: connection refused, DNS, TLS
        raise DeployError(f"{where}: cluster unreachable ({_why(e)})") from None
    action = plan(current, body)
    try:
        if action == "create":
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        elif action == "patch":
            patch = merge_patch(current, body)
            api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, patch)
    except ApiException as e:
        raise DeployError(f"{where}: {action} refused ({_why(e)})") from None
    return action


def main(argv: list[str] | None = None) -> int:
    """Print the InferenceService for a model URI as YAML (infra/k8s/serving/base holds it)."""
    import yaml

    p = argparse.ArgumentParser(prog="python -m excon.serve.deploy", description=main.__doc__)
    p.add_argument("--model", default="models:/excon-animals@champion")
    p.add_argument("--image", default=DEFAULT_IMAGE)
    p.add_argument("--gpus", type=int, default=0)
    args = p.parse_args(argv)
    body = inference_service(args.model, image=args.image, gpus=args.gpus)
    sys.stdout.write(yaml.safe_dump(body, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
