"""dvc.yaml (the local DAG) and the KFP pipeline (the cluster DAG) are the same study: the same
stages per method and seed, the same edges between them and the same parameters per stage. The
KFP side is read flattened (its seed loop unrolled per item, its exit handler inlined:
conftest.py flat_tasks), as a backend runs it."""

import re
from pathlib import Path

import pytest

from excon.config import load_config
from pipelines import dag
from tests.pipelines.conftest import flat_tasks

ROOT = Path(__file__).resolve().parents[2]
# The MLflow parent run: `make run` creates it outside dvc.yaml (python -m excon.tracking
# start-parent); the pipeline has it as its first task and ends it in its exit handler.
# deploy changes the cluster; dvc.yaml says why it has none (locally: excon serve).
PIPELINE_ONLY = {"start-tracking", "finish-run", "deploy"}


METHODS = "|".join(dag.METHODS)


def kfp_node(task: str) -> str:
    """pretrain-excon-seed0 -> pretrain@excon-0, evaluate-robustness-ce-seed1 ->
    evaluate_robustness@ce-1; the chain of register-<m> is dvc.yaml's one register."""
    if re.fullmatch(rf"register-({METHODS})", task):
        return "register"
    m = re.fullmatch(rf"(.+)-({METHODS})-seed(\d+)", task)
    if m is None:
        return task.replace("-", "_")
    stage = m.group(1).replace("-", "_")
    return "register" if stage == "register" else f"{stage}@{m.group(2)}-{m.group(3)}"


def dvc_node(stage: str) -> str:
    """pretrain_excon@0 (one stage group per method) -> pretrain@excon-0."""
    m = re.fullmatch(rf"pretrain_({METHODS})@(\d+)", stage)
    return f"pretrain@{m.group(1)}-{m.group(2)}" if m else stage


def closure(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Every (a, b) with a path a -> ... -> b: the order of the DAG, whichever edges spell it
    (dvc.yaml's report depends on whole run folders, KFP's on the evaluation tasks only)."""
    reach = {(a, b) for a, b in edges if a != b}
    while True:
        more = {(a, d) for a, b in reach for c, d in reach if b == c and a != d} - reach
        if not more:
            return reach
        reach |= more


def read_dvc_stages(root: Path) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = {}
        for stage in repo.index.stages:
            deps = [str(d.def_path) for d in stage.deps if not hasattr(d, "params")]
            params = {p for d in stage.deps if hasattr(d, "params") for p in d.params or []}
            outs = [str(o.def_path) for o in stage.outs]
            stages[stage.name] = {"deps": deps, "outs": outs, "params": params}
    return stages


@pytest.fixture(scope="module")
def dvc_stages():
    return read_dvc_stages(ROOT)


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory) -> tuple[dict, dict]:
    """(dvc stages, KFP flat tasks) of the study with study.seeds=[0, 1, 2]: dvc.yaml and the
    params in a scratch DVC repository, the pipeline compiled with the same override."""
    import subprocess
    import sys

    import yaml

    from tests.pipelines.conftest import compile_docs

    root = tmp_path_factory.mktemp("seeds")
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["seeds"] = [0, 1, 2]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    spec, _ = compile_docs(root, "--set", "study.seeds=[0, 1, 2]")
    return read_dvc_stages(root), spec


def dvc_edges(stages: dict) -> set[tuple[str, str]]:
    """producer -> consumer whenever a dep is, holds or lies inside another stage's output."""
    edges = set()
    for consumer, s in stages.items():
        for dep in s["deps"]:
            for producer, p in stages.items():
                if any(
                    dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")
                    for out in p["outs"]
                ):
                    edges.add((dvc_node(producer), dvc_node(consumer)))
    return closure(edges)


def kfp_edges(spec: dict) -> set[tuple[str, str]]:
    edges = set()
    for name, task in flat_tasks(spec).items():
        for upstream in task.get("dependentTasks", []):
            if not {upstream, name} & PIPELINE_ONLY:
                edges.add((kfp_node(upstream), kfp_node(name)))
    return closure(edges)


def test_same_stages(dvc_stages, compiled):
    spec, _ = compiled
    kfp = {kfp_node(t) for t in flat_tasks(spec) if t not in PIPELINE_ONLY}
    assert kfp == {dvc_node(s) for s in dvc_stages}


def test_the_seed_axis_is_in_both(dvc_stages, compiled):
    """Every run stage exists once per method and seed of study.seeds (params.yaml: [0])."""
    seeds = load_config(ROOT / "params.yaml").study.seeds
    runs = {f"probe@{m}-{k}" for m in dag.METHODS for k in seeds}
    assert runs <= {dvc_node(s) for s in dvc_stages}
    assert runs <= {kfp_node(t) for t in flat_tasks(compiled[0])}


def test_three_seeds_are_the_same_study_in_both(three_seeds):
    """With several seeds (configs/ use [0, 1, 2]) both DAGs run every method x seed, one report
    over all runs and one ordered register: same stages, same edges."""
    stages, spec = three_seeds
    kfp = {kfp_node(t) for t in flat_tasks(spec) if t not in PIPELINE_ONLY}
    assert kfp == {dvc_node(s) for s in stages}
    assert {f"pretrain@{m}-{k}" for m in dag.METHODS for k in (0, 1, 2)} <= kfp
    assert kfp_edges(spec) == dvc_edges(stages)


def test_same_edges(dvc_stages, compiled):
    assert kfp_edges(compiled[0]) == dvc_edges(dvc_stages)


def test_same_parameters(dvc_stages):
    for name, stage in dvc_stages.items():
        base, _, item = dvc_node(name).partition("@")
        method = item.split("-")[0] if base == "pretrain" else None
        assert stage["params"] == set(dag.stage_params(base, method)), name


def test_same_methods():
    import yaml

    methods = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][0]["methods"]
    assert tuple(methods) == dag.METHODS


def test_dvc_yaml_is_rendered_from_the_dag():
    from pipelines import dvc_yaml

    assert dvc_yaml.main([]) == 0, "dvc.yaml is stale: python -m pipelines.dvc_yaml --write"


def test_the_comparison_can_fail(dvc_stages, compiled):
    """Dropping one dvc dependency or one parameter is noticed."""
    spec, _ = compiled
    broken = {k: dict(v) for k, v in dvc_stages.items()}
    broken["report"] = {**broken["report"], "deps": []}
    assert kfp_edges(spec) != dvc_edges(broken)
    changed = dict(dag.STAGE_PARAMS, probe=["probe", "train.seed"])
    assert dvc_stages["probe@ce-0"]["params"] != set(changed["probe"])
    assert dvc_stages["probe@ce-0"]["params"] == set(dag.stage_params("probe"))
