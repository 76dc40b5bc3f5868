"""The KFP 2.17 backend's own cache fingerprint, re-implemented from the compiled package, changes
exactly when a task's result can: a parameter reruns the tasks that read it and those downstream,
a code change the stages that run the code, a recompile nothing.

The backend never reads the compiled `cacheKey` (kfp.local does). Its driver hashes what it hands
the executor (kubeflow/pipelines, tag 2.17.0):
- backend/src/v2/driver/cache.go `getFingerPrint`: `GenerateCacheKey(executorInput.GetInputs(),
  executorInput.GetOutputs(), outputParametersTypeMap, command + args, image, sortedPVCNames)`,
  then `GenerateFingerPrint`: sha256 of the key as JSON;
- backend/src/v2/cacheutils/cache.go `GenerateCacheKey`: InputParameterValues (name -> resolved
  value), InputArtifactNames (name -> each input artifact's `Name`), OutputArtifactsSpec (name ->
  Name, Type, Metadata; the URI wiped), OutputParametersSpec (name -> type), ContainerSpec
  (image, command + args, PVC names);
- an input artifact's `Name` is its MLMD id (backend/src/v2/metadata/converter.go
  `toRuntimeArtifact`: `Name: strconv.FormatInt(artifact.GetId(), 10)`), and a task served from
  cache hands on the cached execution's output artifacts, ids unchanged (driver/cache.go
  `reuseCachedOutputs` -> `collectOutputArtifactMetadataFromCache`); a task that ran makes new
  ones. So here an artifact's id is its producer's fingerprint and output key: equal exactly
  when the producer was a cache hit.
- an output artifact's `Name` is its output key (driver/driver.go `provisionOutputs`).
The seed loop (dsl.ParallelFor) and the exit handler are sub-DAGs; the driver fingerprints each
container task of each iteration, with the iteration's item among its input parameter values, so
the tasks are read here flattened (conftest.py flat_tasks). A dsl.Collected input is a list of
every iteration's artifact ids.
Not hashed: the container's env (where $EXCON_RUN_SETTINGS is), the Kubernetes platform config,
the task's name. No task here mounts a PVC.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipelines import dag, excon_pipeline, stage_code
from pipelines.excon_pipeline import RUN_SETTINGS, RUN_SETTINGS_ENV, TASK_INPUT_KEYS
from tests.pipelines.conftest import flat_tasks

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ("--image", "registry.test/excon:1")
METHODS = ("ce", "supcon", "excon")
PARTS = ("calibration", "robustness", "explanations")


def _resolve(param: dict, spec: dict) -> object:
    if "runtimeValue" in param:
        return param["runtimeValue"]["constant"]
    name = param["componentInputParameter"]  # a run-time parameter: its default here
    return spec["root"]["inputDefinitions"]["parameters"][name].get("defaultValue")


def _order(tasks: dict) -> list[str]:
    """Producers before consumers."""
    done: list[str] = []
    while len(done) < len(tasks):
        for name, task in tasks.items():
            deps = set(task.get("dependentTasks", []))
            if name not in done and deps <= set(done):
                done.append(name)
    return done


def fingerprints(spec: dict) -> dict[str, str]:
    """task -> the 2.17 driver's fingerprint, for every task with caching on."""
    tasks = flat_tasks(spec)
    found: dict[str, str] = {}
    for name in _order(tasks):
        task = tasks[name]
        if not task.get("cachingOptions", {}).get("enableCache"):
            continue
        component = spec["components"][task["componentRef"]["name"]]
        executor = component["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        given = task.get("inputs", {})
        params = {k: _resolve(v, spec) for k, v in given.get("parameters", {}).items()}
        for k, v in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if k not in params and "defaultValue" in v:  # the driver fills in defaults
                params[k] = v["defaultValue"]
        artifacts = {}
        for k, v in given.get("artifacts", {}).items():
            refs = v.get("taskOutputArtifacts") or [v["taskOutputArtifact"]]
            # an uncached producer makes new artifacts every run: no cache hit could follow
            assert all(r["producerTask"] in found for r in refs), f"{name} reads uncached {k}"
            artifacts[k] = [f"{found[r['producerTask']]}/{r['outputArtifactKey']}" for r in refs]
        outputs = component.get("outputDefinitions", {})
        key = {
            "inputArtifactNames": artifacts,
            "inputParameterValues": params,
            "outputArtifactsSpec": {
                k: {"name": k, "type": v["artifactType"], "metadata": v.get("metadata")}
                for k, v in outputs.get("artifacts", {}).items()
            },
            "outputParametersSpec": {
                k: v["parameterType"] for k, v in outputs.get("parameters", {}).items()
            },
            "containerSpec": {
                "image": container["image"],
                "cmdArgs": [*container.get("command", []), *container.get("args", [])],
            },
        }
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
        found[name] = hashlib.sha256(text.encode()).hexdigest()
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {n for n in before if before[n] != after[n]}


@pytest.fixture
def base(compile_docs) -> dict[str, str]:
    return fingerprints(compile_docs(*IMAGE)[0])


def test_recompiling_changes_no_fingerprint(compile_docs, base):
    again = fingerprints(compile_docs(*IMAGE)[0])
    assert again == base
    cached = {f"{s}-{m}-seed0" for m in METHODS for s in ("pretrain", "probe")}
    assert {"prepare", "report"} | cached <= base.keys()
    assert not {n for n in base if n.startswith(("register-", "start-tracking", "finish-run"))}


def test_tau_reruns_excon_and_what_follows_it_only(compile_docs, base):
    tau = fingerprints(compile_docs(*IMAGE, "--set", "method.tau=0.6")[0])
    excon = {f"{s}-excon-seed0" for s in ("pretrain", "probe")}
    excon |= {f"evaluate-{p}-excon-seed0" for p in PARTS}
    assert changed(base, tau) == excon | {"report"}  # report reads excon's evaluations


def test_an_eval_parameter_reruns_that_evaluation_only(compile_docs, base):
    pgd = fingerprints(compile_docs(*IMAGE, "--set", "eval.pgd_steps=3")[0])
    assert changed(base, pgd) == {f"evaluate-robustness-{m}-seed0" for m in METHODS} | {"report"}


def test_run_settings_rerun_nothing(compile_docs, base):
    """How a task runs (device, workers, MLflow experiment) is no part of any fingerprint."""
    spec, _ = compile_docs(
        *IMAGE,
        *("--set", "train.device=cpu", "--set", "data.num_workers=4"),
        *("--set", "tracking.experiment=other", "--set", "train.compile=true"),
    )
    assert fingerprints(spec) == base
    env = spec["deploymentSpec"]["executors"]["exec-pretrain-excon"]["container"]["env"]
    (settings,) = [e["value"] for e in env if e["name"] == RUN_SETTINGS_ENV]
    assert {'train.device="cpu"', "data.num_workers=4"} <= set(json.loads(settings))


def test_a_new_image_reruns_everything(compile_docs, base):
    image = fingerprints(compile_docs("--image", "registry.test/excon:2")[0])
    assert changed(base, image) == set(base)


def test_seeds_never_share_a_fingerprint_and_a_new_seed_reruns_only_itself(compile_docs, base):
    two = fingerprints(compile_docs(*IMAGE, "--set", "study.seeds=[0, 1]")[0])
    seed1 = {n.replace("-seed1", "-seed0"): fp for n, fp in two.items() if "-seed1" in n}
    # the seed is an input of every run stage
    assert {n for n in seed1 if seed1[n] == base[n]} == set()
    # adding seed 1 to the study reruns seed 1 and the report, and serves seed 0 from cache
    assert {n: fp for n, fp in two.items() if "-seed1" not in n and n != "report"} == {
        n: fp for n, fp in base.items() if n != "report"
    }
    assert two["report"] != base["report"]
    one = fingerprints(compile_docs(*IMAGE, "--seed", "1", "--set", "study.seeds=[0, 1]")[0])
    assert {n: fp for n, fp in one.items() if "-seed1" in n} == {
        n: fp for n, fp in two.items() if "-seed1" in n
    }


def test_an_evaluation_code_change_reruns_the_evaluations_not_pretrain(
    compile_docs, base, tmp_path, monkeypatch
):
    """code_version hashes the excon files a stage runs (the image's code, which no command
    shows): an edit under excon/evaluate/ reruns the evaluations (and the report they feed)."""
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "excon", copy / "excon", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(
        excon_pipeline, "code_version", lambda stage: stage_code.code_version(stage, copy)
    )
    assert fingerprints(compile_docs(*IMAGE)[0]) == base  # the copy is the same code
    robustness = copy / "excon" / "evaluate" / "robustness.py"
    robustness.write_text(robustness.read_text() + "\n# an edit\n")
    edited = fingerprints(compile_docs(*IMAGE)[0])
    evaluations = {f"evaluate-{p}-{m}-seed0" for m in METHODS for p in PARTS}
    assert changed(base, edited) == evaluations | {"report"}


def test_every_parameter_reaches_the_tasks_it_decides():
    """Each key of the Config is in some stage's slice (an input: it decides results), a run
    setting (the environment: it does not) or a task input of its own; none is dropped to its
    default, and no run setting is also in a cached stage's slice."""
    from excon.config import Config

    config = Config().to_dict()
    keys = {f"{s}.{k}" for s, section in config.items() for k in section}

    def covered(listed: list[str]) -> set[str]:
        return {k for k in keys for entry in listed if k == entry or k.startswith(f"{entry}.")}

    sliced = covered([k for stage in dag.STAGE_PARAMS for k in dag.stage_params(stage)])
    sliced |= covered([k for m in dag.METHODS for k in dag.stage_params("pretrain", m)])
    settings = covered(list(RUN_SETTINGS))
    assert keys - sliced - settings - set(TASK_INPUT_KEYS) == set()
    cached = [s for s in dag.STAGE_PARAMS if s != "register"]  # register is never cached
    cached_slices = covered([k for s in cached for k in dag.stage_params(s)])
    cached_slices |= covered([k for m in dag.METHODS for k in dag.stage_params("pretrain", m)])
    assert (cached_slices - set(TASK_INPUT_KEYS)) & settings == set()


def test_the_fingerprint_rule_can_tell_a_whole_config_input(compile_docs, base, monkeypatch):
    """The rule sees what the issue saw: hand every task the whole study (the old design) and
    method.tau reruns every task."""

    def whole(cfg, stage, method=None):
        return json.dumps(cfg.to_dict(), sort_keys=True)

    monkeypatch.setattr(excon_pipeline, "task_params", whole)
    before = fingerprints(compile_docs(*IMAGE)[0])
    after = fingerprints(compile_docs(*IMAGE, "--set", "method.tau=0.6")[0])
    assert changed(before, after) == set(before)
