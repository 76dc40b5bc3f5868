"""infra/k8s/serving: the InferenceService that serves the champion, validated strictly against
KServe's own CRD schema, plus its NetworkPolicy and the deploy task's Role.

The schema is vendored (fixtures/kserve_inferenceservice_v1beta1.json.gz: the v1beta1
openAPIV3Schema of kserve/kserve config/crd/full/serving.kserve.io_inferenceservices.yaml, at
the commit it names). "Strictly" as `kubectl apply --validate=strict` does: a field the schema
does not declare is an error (the API server would drop it silently), so every object schema
without `additionalProperties` or `x-kubernetes-preserve-unknown-fields` gets
`additionalProperties: false`."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from excon.serve.deploy import inference_service
from tests.infra.crd_schema import strict

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "infra" / "k8s" / "serving"
FIXTURE = Path(__file__).parent / "fixtures" / "kserve_inferenceservice_v1beta1.json.gz"
KUBECTL = Path(sys.executable).parent / "kubectl"
VERSIONS = ("1.33.0", "1.37.0")
CHAMPION = "models:/excon-animals@champion"
KSERVE_ONLY = ("minReplicas", "maxReplicas", "canaryTrafficPercent")  # not PodSpec fields


@cache
def validator() -> jsonschema.Draft7Validator:
    vendored = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    assert vendored["crd"] == "inferenceservices.serving.kserve.io"
    schema = strict(vendored["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described by the CRD: check its shape here
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {k: {"type": "string"} for k in ("name", "namespace")}
        | {k: {"type": "object", "additionalProperties": {"type": "string"}}
           for k in ("labels", "annotations")},
        "additionalProperties": False,
    }  # fmt: skip
    return jsonschema.Draft7Validator(schema)


def validate_isvc(doc: dict) -> None:
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def render(path: Path) -> list[dict]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return list(yaml.safe_load_all(out))


def the_isvc(docs: list[dict]) -> dict:
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc


def test_every_rendered_object_validates_strictly():
    docs = render(SERVING)
    assert sorted(d["kind"] for d in docs) == [
        "InferenceService", "NetworkPolicy", "Role", "RoleBinding"
    ]  # fmt: skip
    for doc in docs:
        assert doc["metadata"]["namespace"] == "excon"
        if doc["kind"] == "InferenceService":
            validate_isvc(doc)
        else:
            for version in VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_the_manifest_is_the_deploy_modules_body():
    """Derived, not copied: the YAML in the repository is `python -m excon.serve.deploy`."""
    assert the_isvc(render(SERVING)) == inference_service(CHAMPION)
    gpu = the_isvc(render(SERVING / "gpu"))
    assert gpu == inference_service(CHAMPION, gpus=1)
    validate_isvc(gpu)


@pytest.mark.parametrize("gpus", [0, 1])
def test_the_predictor_is_a_restricted_pod(gpus):
    predictor = inference_service(CHAMPION, gpus=gpus)["spec"]["predictor"]
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_ONLY}
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "predictor"},
           "template": {"spec": pod}}  # fmt: skip
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["name"] == "kserve-container"
    assert container["command"] == ["excon"] and container["args"][:3] == [
        "serve",
        "--model",
        CHAMPION,
    ]
    sec = container["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"]["drop"] == ["ALL"]
    assert sec["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == bool(gpus)
    assert container["args"][-1] == ("cuda" if gpus else "cpu")


def test_a_canary_rollout_of_a_pinned_version_validates():
    body = inference_service(
        "models:/excon-animals/7", canary_traffic_percent=10, model_version="7"
    )
    validate_isvc(body)
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert body["metadata"]["annotations"]["excon.io/model-version"] == "7"
    with pytest.raises(ValueError, match=r"0\.\.100"):
        inference_service(CHAMPION, canary_traffic_percent=101)


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        (("spec", "predictor"), "gpus", 1),  # not a field: the API server would drop it
        (("spec", "predictor", "containers", 0), "imagePullPolice", "Always"),  # a typo
        (("spec", "predictor"), "canaryTrafficPercent", "10%"),  # wrong type
    ],
)
def test_the_validation_can_fail(where, field, value):
    body = copy.deepcopy(inference_service(CHAMPION))
    node = body
    for key in where:
        node = node[key]
    node[field] = value
    with pytest.raises(AssertionError):
        validate_isvc(body)
