"""dvc.yaml (the local DAG) and the KFP pipeline (the cluster DAG) are the same study: the same
stages per method, the same edges between them and the same parameters per stage."""

import re
from pathlib import Path

import pytest

from pipelines import dag

ROOT = Path(__file__).resolve().parents[2]
# The MLflow parent run: `make run` creates it outside dvc.yaml (python -m excon.tracking
# start-parent); the pipeline has it as its first task.
PIPELINE_ONLY = {"start-tracking"}


def kfp_name_to_dvc(task: str) -> str:
    """pretrain-excon -> pretrain@excon, evaluate-robustness-ce -> evaluate_robustness@ce."""
    m = re.fullmatch(r"(.+)-(" + "|".join(dag.METHODS) + ")", task)
    stage, method = (m.group(1), m.group(2)) if m else (task, None)
    stage = stage.replace("-", "_")
    return f"{stage}@{method}" if method else stage


@pytest.fixture(scope="module")
def dvc_stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {}
        for stage in repo.index.stages:
            deps = [str(d.def_path) for d in stage.deps if not hasattr(d, "params")]
            params = {p for d in stage.deps if hasattr(d, "params") for p in d.params or []}
            outs = [str(o.def_path) for o in stage.outs]
            stages[stage.name] = {"deps": deps, "outs": outs, "params": params}
    return stages


def dvc_edges(stages: dict) -> set[tuple[str, str]]:
    """producer -> consumer whenever a dep is (inside) another stage's output."""
    edges = set()
    for consumer, s in stages.items():
        for dep in s["deps"]:
            for producer, p in stages.items():
                if any(dep == out or dep.startswith(out + "/") for out in p["outs"]):
                    edges.add((producer, consumer))
    return edges


def kfp_edges(spec: dict) -> set[tuple[str, str]]:
    edges = set()
    for name, task in spec["root"]["dag"]["tasks"].items():
        for upstream in task.get("dependentTasks", []):
            if upstream not in PIPELINE_ONLY:
                edges.add((kfp_name_to_dvc(upstream), kfp_name_to_dvc(name)))
    return edges


def test_same_stages(dvc_stages, compiled):
    spec, _ = compiled
    kfp = {kfp_name_to_dvc(t) for t in spec["root"]["dag"]["tasks"] if t not in PIPELINE_ONLY}
    assert kfp == set(dvc_stages)


def test_same_edges(dvc_stages, compiled):
    assert kfp_edges(compiled[0]) == dvc_edges(dvc_stages)


def test_same_parameters(dvc_stages):
    for name, stage in dvc_stages.items():
        base, _, method = name.partition("@")
        assert stage["params"] == set(dag.stage_params(base, method or None)), name


def test_same_methods():
    import yaml

    methods = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][0]["methods"]
    assert tuple(methods) == dag.METHODS


def test_the_comparison_can_fail(dvc_stages, compiled):
    """Dropping one dvc dependency or one parameter is noticed."""
    spec, _ = compiled
    broken = {k: dict(v) for k, v in dvc_stages.items()}
    broken["report"] = {**broken["report"], "deps": broken["report"]["deps"][1:]}
    assert kfp_edges(spec) != dvc_edges(broken)
    changed = dict(dag.STAGE_PARAMS, probe=["probe"])  # train.seed dropped from the table
    assert dvc_stages["probe@ce"]["params"] != set(changed["probe"])
    assert dvc_stages["probe@ce"]["params"] == set(dag.stage_params("probe", "ce"))
