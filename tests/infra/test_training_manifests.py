"""infra/k8s/training: the PyTorchJob template (filled by pipelines/pytorchjob.py) and the Role
that lets pipeline tasks launch it. kubernetes-validate has no schema for the Training
Operator's CRD, so each replica's pod is validated strictly as a core v1 PodTemplate, and the
job's own shape is asserted."""

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from pipelines.pytorchjob import TEMPLATE, render

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
VERSIONS = ("1.33.0", "1.37.0")


def pod_templates(job: dict) -> dict[str, dict]:
    return {role: s["template"] for role, s in job["spec"]["pytorchReplicaSpecs"].items()}


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 2), (2, 4), (4, 8)])
def test_rendered_job_shape(nodes, gpus):
    job = render("registry.test/excon:1", nodes, gpus)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert specs.get("Worker", {}).get("replicas", 0) == nodes - 1
    assert job["spec"]["nprocPerNode"] == str(gpus)  # torchrun: one process per GPU
    for role, template in pod_templates(job).items():
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch", role  # the name the operator looks for
        assert container["image"] == "registry.test/excon:1"
        script = container["args"][0]  # run for real in tests/storage/test_pytorchjob_pod.py
        assert "-m excon.cli pretrain" in script and script.startswith("mkdir -p /tmp/work")
        assert "--resume-compatible" in script and "--checkpoint-url" in script
        for key in ("requests", "limits"):
            assert container["resources"][key]["nvidia.com/gpu"] == gpus


def test_pods_validate_strictly_and_are_restricted():
    for role, template in pod_templates(render("registry.test/excon:1", 2, 2)).items():
        doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
               "template": template}  # fmt: skip
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        sec = pod["containers"][0]["securityContext"]
        assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"]["drop"] == ["ALL"]
        assert sec["readOnlyRootFilesystem"] is True
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"


def test_an_unknown_pod_field_fails_validation():
    template = pod_templates(render("registry.test/excon:1", 1, 2))["Master"]
    template["spec"]["containers"][0]["gpus"] = 2
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "m"},
           "template": template}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_bad_sizes_and_a_missing_template_are_errors(tmp_path):
    with pytest.raises(ValueError, match="nodes and gpus"):
        render("img", 0, 1)
    with pytest.raises(FileNotFoundError, match="PyTorchJob template"):
        render("img", 2, 1, template=tmp_path / "none.yaml")
    assert TEMPLATE.is_file()


def test_launcher_role_renders_and_validates():
    import yaml

    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "infra" / "k8s" / "training")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    docs = list(yaml.safe_load_all(out))
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding"}
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["rules"] == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"],
         "verbs": ["create", "get", "list", "watch", "delete"]}
    ]  # fmt: skip
