"""deploy: the register task's decision -> the InferenceService applied (or nothing). Without a
cluster: a gate that promoted nothing deploys nothing, and a promotion reaches the real
`kubernetes` client, configured by a kubeconfig pointing where nothing listens."""

from pathlib import Path

import pytest
from kfp.dsl import Markdown

from components.deploy.component import deploy
from excon.serve.deploy import DeployError
from tests.serve.conftest import free_port


def decision(tmp_path: Path, *versions: dict) -> Markdown:
    path = tmp_path / "decision.md"
    path.write_text("# the gate\n")
    return Markdown(
        name="decision", uri=str(path), metadata={"method": "excon", "versions": list(versions)}
    )


def deployed(tmp_path: Path) -> Markdown:
    return Markdown(name="deployed", uri=str(tmp_path / "deployed.md"), metadata={})


def test_nothing_is_deployed_when_the_gate_promoted_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # any cluster call would fail
    out = deployed(tmp_path)
    rejected = {"seed": 0, "name": "excon-blobs", "version": 2, "decision": "rejected"}
    deploy.python_func(decision=decision(tmp_path, rejected), deployed=out)
    assert out.metadata == {"action": "none"}
    assert Path(out.path).read_text() == "nothing deployed: no version promoted (rejected)\n"


def test_the_last_promoted_version_goes_to_the_cluster(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    versions = [
        {"seed": 0, "name": "excon-blobs", "version": 3, "decision": "promoted"},
        {"seed": 1, "name": "excon-blobs", "version": 4, "decision": "promoted"},
        {"seed": 2, "name": "excon-blobs", "version": 5, "decision": "rejected"},
    ]
    with pytest.raises(DeployError, match="InferenceService excon/excon: cluster unreachable"):
        deploy.python_func(decision=decision(tmp_path, *versions), deployed=deployed(tmp_path))
