"""A compiled pipeline package, parsed: (PipelineSpec, PlatformSpec)."""

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]


def compile_docs(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    out = tmp_path / f"p{len(list(tmp_path.glob('*.yaml')))}.yaml"
    assert main(["compile", "--params", str(ROOT / "params.yaml"), "-o", str(out), *args]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform


@pytest.fixture(scope="session")
def code_versions() -> dict[str, str]:
    """Each stage's code_version, read once: the compiles of one test compare equal even while
    a teammate edits excon/ in the same working tree between them."""
    from pipelines import dag, stage_code

    return {stage: stage_code.code_version(stage) for stage in dag.STAGE_PARAMS}


@pytest.fixture(autouse=True)
def _stable_code_versions(code_versions, monkeypatch) -> None:
    from pipelines import excon_pipeline

    monkeypatch.setattr(excon_pipeline, "code_version", code_versions.__getitem__)


@pytest.fixture(name="compile_docs")
def compile_docs_fixture(tmp_path):
    """compile_docs(*cli_args) -> (PipelineSpec, PlatformSpec)."""
    return lambda *args: compile_docs(tmp_path, *args)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    return compile_docs(tmp_path_factory.mktemp("compiled"), "--image", "registry.test/excon:1")


def flat_tasks(spec: dict) -> dict[str, dict]:
    """The pipeline's tasks as one flat DAG, as a backend runs them: the exit handler's and the
    seed loop's sub-DAGs inlined, one copy of each loop task per item named `<task>-seed<k>`.
    Each task's inputs are resolved to the root's terms: a parameter is a `runtimeValue`
    constant (loop items included) or a root `componentInputParameter`; an artifact is a
    `taskOutputArtifact` of a flat task, or `taskOutputArtifacts` (a list) when it is
    dsl.Collected over the loop; dependentTasks name flat tasks."""
    return _inline(spec, spec["root"]["dag"], {}, {}, "", [])


def _inline(spec: dict, dag: dict, params: dict, artifacts: dict, suffix: str, deps: list) -> dict:
    flat: dict[str, dict] = {}
    scope: dict[str, list[str]] = {}  # a DAG task -> its flat leaves
    collected: dict[tuple[str, str], list[dict]] = {}  # (loop task, output key) -> artifacts
    for name in _order(dag["tasks"]):
        task = dag["tasks"][name]
        given = task.get("inputs", {})
        mine = {k: _param(v, params) for k, v in given.get("parameters", {}).items()}
        arts = {
            k: _artifact(v, artifacts, scope, collected, suffix)
            for k, v in given.get("artifacts", {}).items()
        }
        after = [
            *deps,
            *(n for d in task.get("dependentTasks", []) for n in scope.get(d, [d + suffix])),
        ]
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" not in component:
            flat[name + suffix] = {**task, "inputs": {"parameters": mine, "artifacts": arts},
                                   "dependentTasks": after}  # fmt: skip
            continue
        items = [None]
        if "parameterIterator" in task:
            items = json.loads(task["parameterIterator"]["items"]["raw"])
        inner: dict[str, dict] = {}
        for item in items:
            scoped = dict(mine)
            tail = suffix
            if item is not None:
                scoped[task["parameterIterator"]["itemInput"]] = {
                    "runtimeValue": {"constant": item}
                }
                tail = f"{suffix}-seed{item}"
            inner.update(_inline(spec, component["dag"], scoped, arts, tail, after))
        flat.update(inner)
        scope[name] = list(inner)
        for key, out in component["dag"].get("outputs", {}).get("artifacts", {}).items():
            (sel,) = out["artifactSelectors"]
            tails = [f"-seed{i}" for i in items] if items != [None] else [""]
            collected[(name, key)] = [
                {"producerTask": sel["producerSubtask"] + suffix + t,
                 "outputArtifactKey": sel["outputArtifactKey"]} for t in tails
            ]  # fmt: skip
    return flat


def _order(tasks: dict) -> list[str]:
    done: list[str] = []
    while len(done) < len(tasks):
        for name, task in tasks.items():
            if name not in done and set(task.get("dependentTasks", [])) <= set(done):
                done.append(name)
    return done


def _param(value: dict, params: dict) -> dict:
    if "componentInputParameter" in value:
        name = value["componentInputParameter"]
        return params.get(name, value)
    return value


def _artifact(value: dict, artifacts: dict, scope: dict, collected: dict, suffix: str) -> dict:
    if "componentInputArtifact" in value:
        return artifacts[value["componentInputArtifact"]]
    ref = value["taskOutputArtifact"]
    key = (ref["producerTask"], ref["outputArtifactKey"])
    if key in collected:
        return {"taskOutputArtifacts": collected[key]}
    return {"taskOutputArtifact": {**ref, "producerTask": ref["producerTask"] + suffix}}
