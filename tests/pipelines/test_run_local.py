"""The whole DAG through kfp.local (SubprocessRunner, this Python) on the tiny preset: every task
runs, the report compares the three methods and the registry holds the gated versions."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Whole pipelines in subprocesses: slower than the suite default when the workers share 2 cores.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("kfp-local")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXCON_"))}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run-local",
            "--params",
            str(ROOT / "params.yaml"),
            "--root",
            str(work / "state"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    runs = list((work / "state" / "artifacts").iterdir())
    assert len(runs) == 1, runs
    return runs[0], work / "state" / "mlflow.db", log


def test_every_task_succeeds(local_run):
    run, _, log = local_run
    tasks = {p.name for p in run.iterdir()}
    assert tasks == {"start-tracking", "prepare", "report"} | {
        f"{stage}-{m}-seed0"
        for m in ("ce", "supcon", "excon")
        for stage in (
            "pretrain",
            "probe",
            "evaluate-calibration",
            "evaluate-robustness",
            "evaluate-explanations",
            "register",
        )
    }
    assert "Pipeline \x1b[95m'excon-study'\x1b[0m finished with status \x1b[92mSUCCESS" in log
    assert "kfp.local: pipeline finished" in log


def test_artifacts_are_the_stage_outputs(local_run):
    run, _, _ = local_run
    assert (run / "pretrain-excon-seed0" / "model" / "model.safetensors").is_file()
    assert not (run / "pretrain-excon-seed0" / "model" / "checkpoint.pt").exists()
    assert (run / "probe-excon-seed0" / "probe_head" / "probe_head.safetensors").is_file()
    adv = json.loads(
        (run / "evaluate-robustness-excon-seed0" / "evaluation" / "metrics.json").read_text()
    )
    assert adv["method"] == "excon" and "adv/pgd/eps4/acc" in adv
    assert "data:image/png;base64," in (run / "report" / "plots").read_text()
    table = (run / "report" / "table").read_text()
    assert "top-1 ↑" in table and all(m in table for m in ("ce (n=1)", "supcon", "excon"))


def test_registry_and_parent_run(local_run):
    import mlflow

    run, db, _ = local_run
    decisions = [
        (run / f"register-{m}-seed0" / "decision").read_text() for m in ("ce", "supcon", "excon")
    ]
    # the first registration has no champion to beat (kfp.local runs the three in any order)
    assert any("version 1: promoted" in t for t in decisions)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    versions = client.search_model_versions("name='excon-animals'")
    assert len(versions) == 3
    # the gate's recorded decisions and the alias agree: @champion is the last promoted version
    promoted = [int(v) for t in decisions for v in re.findall(r"version (\d+): promoted", t)]
    champion = client.get_model_version_by_alias("excon-animals", "champion")
    assert int(champion.version) == max(promoted)
    # every stage's run hangs under the pipeline run's parent
    parent = json.loads((run / "start-tracking" / "executor_output.json").read_text())
    parent_id = parent["parameterValues"]["Output"]
    exp = client.get_experiment_by_name("excon")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    stages = {r.data.tags["excon.stage"] for r in children}
    assert {"pretrain", "probe", "evaluate_robustness", "report", "register"} <= stages
