"""deploy: the register chain's answer -> the InferenceService applied (or nothing). Without a
cluster: no promotion deploys nothing, an alias is refused, and a promotion reaches the real
`kubernetes` client, configured by a kubeconfig pointing where nothing listens."""

from pathlib import Path

import pytest
from kfp.dsl import Markdown

from components.deploy.component import deploy
from excon.serve.deploy import DeployError
from tests.serve.conftest import free_port


def deployed(tmp_path: Path) -> Markdown:
    return Markdown(name="deployed", uri=str(tmp_path / "deployed.md"), metadata={})


def test_nothing_is_deployed_when_the_gate_promoted_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # any cluster call would fail
    out = deployed(tmp_path)
    deploy.python_func(model_uri="", deployed=out)
    assert out.metadata == {"action": "none"}
    assert Path(out.path).read_text() == "nothing deployed: no version promoted\n"


def test_an_alias_is_refused(tmp_path, monkeypatch):
    # A revision must pin its version: an alias would move under a running revision.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="expected models:/<name>/<version>"):
        deploy.python_func(model_uri="models:/excon-blobs@champion", deployed=deployed(tmp_path))


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
    with pytest.raises(DeployError, match="InferenceService excon/excon: cluster unreachable"):
        deploy.python_func(model_uri="models:/excon-blobs/4", deployed=deployed(tmp_path))
