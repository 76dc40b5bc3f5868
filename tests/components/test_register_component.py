"""register: a model version behind the promotion gate, from the pipeline's artifacts."""

import json
from pathlib import Path

import mlflow
import pytest
from kfp.dsl import Markdown

from components.register.component import register
from excon.tracking import RegistryError


@pytest.fixture
def inputs(task, dataset, pretrained, probed, evaluations, tmp_path) -> dict:
    # `report` only orders registration after the comparison: any Markdown file stands in
    table = tmp_path / "report.md"
    table.write_text("# excon: methods compared\n")
    return {
        **task("register"),
        "dataset": dataset,
        # dsl.Collected lists over the seed loop: the tests' study has one seed
        "model": [pretrained[0]],
        "probe_head": [probed[0]],
        **{part: [evaluation] for part, (evaluation, _, _) in evaluations.items()},
        "report": Markdown(name="table", uri=str(table), metadata={}),
    }


def test_first_version_is_promoted_then_gated(
    make_config, use_settings, tracking_on, mlflow_store, inputs, output, evaluations, tmp_path
):
    use_settings(make_config(*tracking_on))
    first = output(Markdown, "decision1")
    # the register chain's answer: what deploy rolls out (dsl.If on it being non-empty)
    assert register.python_func(decision=first, **inputs) == "models:/excon-blobs/1"
    assert first.metadata == {
        "method": "excon",
        "versions": [{"seed": 0, "name": "excon-blobs", "version": 1, "decision": "promoted"}],
    }
    assert Path(first.path).read_text() == (
        "# seed 0: excon-blobs version 1: promoted\n\n- no champion yet: promoted\n"
    )

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    version = client.get_model_version_by_alias("excon-blobs", "champion")
    assert int(version.version) == 1 and version.tags["gate.decision"] == "promoted"
    top1 = evaluations["calibration"][1].metadata["test/top1"]
    assert float(version.tags["metric.test/top1"]) == top1
    # provenance points at the pipeline's model artifact, not the component's scratch dir
    assert version.tags["excon.run_dir"] == inputs["model"][0].uri
    # the registered files are the pipeline's artifacts
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri="models:/excon-blobs/1",
            dst_path=str(tmp_path / "dl"),
            tracking_uri=mlflow_store,
        )
    )
    model_json = next(local.rglob("model.json"))
    assert json.loads(model_json.read_text()) == json.loads(
        (Path(inputs["model"][0].path) / "model.json").read_text()
    )
    head = Path(inputs["probe_head"][0].path) / "probe_head.safetensors"
    assert (model_json.parent / "probe_head.safetensors").read_bytes() == head.read_bytes()

    # the same model again (a retried task): version 1 is returned, nothing new is registered
    second = output(Markdown, "decision2")
    # nothing promoted here: the answer is the earlier registers' (none: nothing to deploy)
    assert register.python_func(decision=second, **inputs) == ""
    earlier = "models:/excon-blobs/7"
    assert register.python_func(decision=second, promoted_before=earlier, **inputs) == earlier
    lines = Path(second.path).read_text().splitlines()
    assert lines[0] == "# seed 0: excon-blobs version 1: already registered as version 1"
    assert len(client.search_model_versions("name = 'excon-blobs'")) == 1
    assert int(client.get_model_version_by_alias("excon-blobs", "champion").version) == 1


def test_tracking_off_is_a_clear_error(inputs, output):
    decision = output(Markdown, "decision")
    with pytest.raises(RegistryError, match="needs MLflow tracking"):
        register.python_func(decision=decision, **inputs)
    assert not Path(decision.path).exists()
