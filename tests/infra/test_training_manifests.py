"""infra/k8s/training and the TrainJob pipelines/trainjob.py builds: validated strictly against
Kubeflow Trainer's own TrainJob CRD schema, referencing the runtime Trainer ships, restricted pods
and no credentials in the object; plus the launcher's RBAC.

The schema is vendored (fixtures/trainer_trainjob_v1alpha1.json.gz: the v1alpha1
openAPIV3Schema of kubeflow/trainer manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml at
the tag and commit it names), and so is the runtime the job references
(fixtures/torch_distributed_runtime_v2.3.0.yaml, manifests/base/runtimes/torch_distributed.yaml).
"Strictly" as `kubectl apply --validate=strict` does: a field the schema does not declare is an
error (the API server would drop it silently)."""

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
from kubeflow_trainer_api import models as m

from pipelines import lifecycle
from pipelines.trainjob import NODE, RUNTIME, SCRIPT, prepare, render
from tests.infra.crd_schema import strict

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
KUBECTL = Path(sys.executable).parent / "kubectl"
VERSIONS = ("1.33.0", "1.37.0")


@cache
def validator() -> jsonschema.Draft7Validator:
    vendored = json.loads(
        gzip.decompress((FIXTURES / "trainer_trainjob_v1alpha1.json.gz").read_bytes())
    )
    assert vendored["crd"] == "trainjobs.trainer.kubeflow.org" and vendored["tag"] == "v2.3.0"
    schema = strict(vendored["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described by the CRD: check its shape here
    owner = {"type": "object", "required": ["apiVersion", "kind", "name", "uid"],
             "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                            "name": {"type": "string"}, "uid": {"type": "string"},
                            "blockOwnerDeletion": {"type": "boolean"},
                            "controller": {"type": "boolean"}},
             "additionalProperties": False}  # fmt: skip
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {k: {"type": "string"} for k in ("name", "namespace")}
        | {k: {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}
           for k in ("labels",)}
        | {"ownerReferences": {"type": "array", "items": owner}},
        "additionalProperties": False,
    }  # fmt: skip
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict) -> None:
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def launched(nodes: int = 2, gpus: int = 4) -> dict:
    """The job as the launcher creates it: named, labelled, owned, scheduled."""
    owner = m.IoK8sApimachineryPkgApisMetaV1OwnerReference(
        apiVersion="argoproj.io/v1alpha1", kind="Workflow", name="excon-study-x1", uid="u-1",
        blockOwnerDeletion=False,
    )  # fmt: skip
    job = prepare(
        render("registry.test/excon:1", nodes, gpus),
        "excon-pretrain-excon-studyx1-0",
        {"EXCON_STAGE_URL": "s3://b/stage/excon-study-x1/excon", "EXCON_METHOD": "excon"},
        {lifecycle.RUN_LABEL: lifecycle.run_label("excon-study-x1")},
        {"nvidia.com/gpu.present": "true"},
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        owner,
    )
    return job.to_dict()


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 2), (2, 4), (4, 8)])
def test_the_trainjob_validates_against_the_crd_and_asks_for_its_gpus(nodes, gpus):
    for doc in (render("registry.test/excon:1", nodes, gpus), launched(nodes, gpus)):
        validate(doc)
        assert (doc["apiVersion"], doc["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
        spec = doc["spec"]
        assert spec["runtimeRef"] == {"name": RUNTIME, "kind": "ClusterTrainingRuntime",
                                      "apiGroup": "trainer.kubeflow.org"}  # fmt: skip
        trainer = spec["trainer"]
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, gpus)
        for key in ("requests", "limits"):
            assert trainer["resourcesPerNode"][key]["nvidia.com/gpu"] == str(gpus)
        assert spec["activeDeadlineSeconds"] == 72 * 3600
        assert trainer["args"] == [SCRIPT]  # run for real in tests/storage/test_trainjob_pod.py


def test_an_unknown_field_fails_validation():
    doc = launched()
    doc["spec"]["trainer"]["gpus"] = 2
    with pytest.raises(AssertionError, match="Additional properties"):
        validate(doc)
    doc = launched()
    del doc["spec"]["runtimeRef"]["name"]
    with pytest.raises(AssertionError, match="'name' is a required property"):
        validate(doc)


def test_the_patch_targets_the_runtimes_own_job_and_container():
    """A runtime patch naming a replicated job or container the runtime lacks would not apply."""
    runtime = yaml.safe_load((FIXTURES / "torch_distributed_runtime_v2.3.0.yaml").read_text())
    assert runtime["metadata"]["name"] == RUNTIME
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (container,) = rjob["template"]["spec"]["template"]["spec"]["containers"]
    assert rjob["name"] == container["name"] == NODE
    (patch,) = launched()["spec"]["runtimePatches"]
    (rpatch,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rpatch["name"] == NODE
    assert [c["name"] for c in rpatch["template"]["spec"]["template"]["spec"]["containers"]] == [
        NODE
    ]


def test_pods_are_restricted_scheduled_and_carry_no_credentials():
    doc = launched()
    (patch,) = doc["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    # the pod as Kubernetes sees it: strict core v1 validation of the patched fields
    container = {"name": NODE, "image": "registry.test/excon:1", **pod["containers"][0]}
    template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "node"},
                "template": {"spec": {**pod, "containers": [container]}}}  # fmt: skip
    for version in VERSIONS:
        kubernetes_validate.validate(template, version, strict=True)
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == 10001
    )
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sec = pod["containers"][0]["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"]["drop"] == ["ALL"]
    assert sec["readOnlyRootFilesystem"] is True
    assert {v["name"]: v["emptyDir"].get("medium") for v in pod["volumes"]} == {
        "scratch": None, "dshm": "Memory"}  # fmt: skip
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e for e in doc["spec"]["trainer"]["env"]}
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True
    owner = doc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Workflow", "excon-study-x1")
    assert doc["metadata"]["labels"][lifecycle.RUN_LABEL] == "excon-study-x1"


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="nodes and gpus"):
        render("img", 0, 1)


def test_launcher_rbac_renders_and_validates():
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "infra" / "k8s" / "training")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    docs = list(yaml.safe_load_all(out))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in role["rules"]}
    assert {"create", "get", "delete", "list"} <= rules[("trainer.kubeflow.org", "trainjobs")]
    assert rules[("argoproj.io", "workflows")] == {"get"}  # the owner's uid, nothing more
