"""The whole DAG through kfp.local (SubprocessRunner, this Python) on the tiny preset: every task
runs (the seed loop, dsl.Collected and the exit handler included), the report compares the three
methods, the registry holds the gated versions and the exit handler ended the MLflow parent."""

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


def task_dirs(run: Path) -> dict[str, Path]:
    """task -> its folder; kfp.local keeps a loop's tasks in for-loop-<n>-iteration-<i>/, named
    here <task>-seed<k> as the tests of the compiled DAG name them (params.yaml: seeds [0])."""
    found = {}
    for path in run.iterdir():
        if path.name.startswith("for-loop-"):
            k = int(path.name.rsplit("-", 1)[1])  # iteration i of study.seeds = [0]: seed i
            found |= {f"{task.name}-seed{k}": task for task in path.iterdir()}
        else:
            found[path.name] = path
    return found


def test_every_task_succeeds(local_run):
    run, _, log = local_run
    methods = ("ce", "supcon", "excon")
    assert set(task_dirs(run)) == {"start-tracking", "prepare", "report", "finish-run"} | {
        f"{stage}-{m}-seed0"
        for m in methods
        for stage in (
            "pretrain",
            "probe",
            "evaluate-calibration",
            "evaluate-robustness",
            "evaluate-explanations",
        )
    } | {f"register-{m}" for m in methods}
    assert "Pipeline \x1b[95m'excon-study'\x1b[0m finished with status \x1b[92mSUCCESS" in log
    assert "kfp.local: pipeline finished" in log


def test_artifacts_are_the_stage_outputs(local_run):
    run, _, _ = local_run
    task = task_dirs(run)
    assert (task["pretrain-excon-seed0"] / "model" / "model.safetensors").is_file()
    assert not (task["pretrain-excon-seed0"] / "model" / "checkpoint.pt").exists()
    assert (task["probe-excon-seed0"] / "probe_head" / "probe_head.safetensors").is_file()
    adv = json.loads(
        (task["evaluate-robustness-excon-seed0"] / "evaluation" / "metrics.json").read_text()
    )
    assert adv["method"] == "excon" and "adv/pgd/eps4/acc" in adv
    assert "data:image/png;base64," in (run / "report" / "plots").read_text()
    table = (run / "report" / "table").read_text()
    assert "top-1 ↑" in table and all(m in table for m in ("ce (n=1)", "supcon", "excon"))


def test_registry_and_parent_run(local_run):
    import mlflow

    run, db, _ = local_run
    decisions = [
        (run / f"register-{m}" / "decision").read_text() for m in ("ce", "supcon", "excon")
    ]
    # registered in order: ce's (seed 0) first, with no champion to beat
    assert "# seed 0: excon-animals version 1: promoted" in decisions[0]
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
    # start-tracking left it RUNNING; the exit handler ended it with the pipeline's status
    assert client.get_run(parent_id).info.status == "FINISHED"
    finish = json.loads((run / "finish-run" / "executor_output.json").read_text())
    outcome = json.loads(finish["parameterValues"]["Output"])
    assert outcome == {"state": "SUCCEEDED", "mlflow_status": "FINISHED", "parent": parent_id,
                       "deleted": []}  # fmt: skip
