"""The compiled pipeline: tasks per method and seed (a ParallelFor over study.seeds, read here
flattened as a backend runs it: tests/pipelines/conftest.py flat_tasks), the exit handler, GPU
scheduling, secrets, /dev/shm, retries, pod
security and deadlines, each task's inputs and cache keys, checked in both documents of the
package (PipelineSpec and the Kubernetes PlatformSpec). What the KFP backend's own fingerprint
makes of the inputs: test_kfp_fingerprint.py."""

import json
from pathlib import Path

import pytest

from excon.config import load_config
from pipelines.excon_pipeline import build_pipeline
from tests.pipelines.conftest import ROOT, flat_tasks

METHODS = ("ce", "supcon", "excon")
GPU_STAGES = (
    "pretrain",
    "probe",
    "evaluate-calibration",
    "evaluate-robustness",
    "evaluate-explanations",
)


def tasks(spec: dict) -> dict:
    return flat_tasks(spec)


def executor(spec: dict, task: str) -> dict:
    label = tasks(spec)[task]["componentRef"]["name"].replace("comp-", "exec-", 1)
    return spec["deploymentSpec"]["executors"][label]["container"]


def k8s(platform: dict, spec: dict, task: str) -> dict:
    label = tasks(spec)[task]["componentRef"]["name"].replace("comp-", "exec-", 1)
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]


def test_one_named_task_per_stage_and_method(compiled):
    spec, _ = compiled
    expected = {"start-tracking", "prepare", "report", "finish-run"} | {
        f"{stage}-{m}-seed0" for m in METHODS for stage in GPU_STAGES
    }
    expected |= {f"register-{m}" for m in METHODS}  # each registers every seed of its method
    expected |= {"deploy"}  # under dsl.If: runs only when a register promoted
    assert set(tasks(spec)) == expected
    assert tasks(spec)["pretrain-excon-seed0"]["taskInfo"]["name"] == "pretrain-excon"


def test_gpu_tasks_request_a_gpu_on_gpu_nodes(compiled):
    spec, platform = compiled
    for m in METHODS:
        for stage in GPU_STAGES:
            task = f"{stage}-{m}-seed0"
            container = executor(spec, task)
            assert container["image"] == "registry.test/excon:1"
            res = container["resources"]
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu", task
            assert res["accelerator"]["resourceCount"] == "1", task
            assert res["resourceCpuRequest"] and res["resourceMemoryLimit"], task
            conf = k8s(platform, spec, task)
            # inside the seed loop: the run-time parameters as the loop hands them on
            assert conf["nodeSelector"]["nodeSelectorJson"] == {
                "componentInputParameter": "pipelinechannel--gpu_node_selector"
            }
            assert conf["tolerations"] == [
                {"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_tolerations"}}
            ]
            assert conf["emptyDirMounts"] == [
                {"mountPath": "/tmp", "volumeName": "scratch"},
                {
                    "medium": "Memory",
                    "mountPath": "/dev/shm",
                    "sizeLimit": "16Gi",
                    "volumeName": "dshm",
                },
            ]
    # CPU-only stages ask for no accelerator and mount no shm
    for task in ("prepare", "report", "register-ce", "start-tracking", "finish-run"):
        assert "accelerator" not in executor(spec, task).get("resources", {}), task
        mounts = k8s(platform, spec, task)["emptyDirMounts"]
        assert mounts == [{"mountPath": "/tmp", "volumeName": "scratch"}], task
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["gpu_node_selector"]["defaultValue"] == {"nvidia.com/gpu.present": "true"}
    assert defaults["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_every_task_reads_credentials_from_secrets(compiled):
    spec, platform = compiled
    for task in tasks(spec):
        secrets = k8s(platform, spec, task)["secretAsEnv"]
        by_name = {}
        for s in secrets:
            by_name.setdefault((s["secretName"], s["optional"]), set()).update(
                e["envVar"] for e in s["keyToEnv"]
            )
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= by_name[("excon-s3", False)]
        assert by_name[("excon-mlflow", False)] == {"MLFLOW_TRACKING_URI"}
        assert by_name[("excon-mlflow", True)] == {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        }


def test_retries_on_pretrain_only(compiled):
    spec, _ = compiled
    for name, task in tasks(spec).items():
        retries = task.get("retryPolicy", {}).get("maxRetryCount")
        assert retries == (2 if name.startswith("pretrain-") else None), name


def test_caching_with_keys_except_for_side_effects(compiled):
    """The seed loop's tasks are cached by the backend's fingerprint only: a compiled key is one
    constant for every iteration, and a backend honouring it would hand seed 1 seed 0's run."""
    spec, _ = compiled
    for name, task in tasks(spec).items():
        caching = task.get("cachingOptions", {})
        if name.startswith(("register-", "start-tracking", "finish-run", "deploy")):
            # they change MLflow or the cluster: never skipped
            assert not caching.get("enableCache"), name
        elif name in ("prepare", "report"):
            assert caching["enableCache"] is True, name
            assert caching["cacheKey"].startswith(name), name
        else:
            assert caching == {"enableCache": True}, name


def keys(spec: dict) -> dict[str, str]:
    return {
        n: t["cachingOptions"]["cacheKey"]
        for n, t in tasks(spec).items()
        if t.get("cachingOptions", {}).get("cacheKey")
    }


def test_cache_keys_change_exactly_where_results_can(compile_docs, compiled):
    base = keys(compile_docs("--image", "registry.test/excon:1")[0])
    assert base == keys(compiled[0]) and set(base) == {"prepare", "report"}  # deterministic
    tau = keys(compile_docs("--image", "registry.test/excon:1", "--set", "method.tau=0.6")[0])
    assert {n for n in base if base[n] != tau[n]} == {"report"}  # it chains every run's key
    seeds = keys(compile_docs("--image", "registry.test/excon:1", "--set", "study.seeds=[0, 1]")[0])
    assert {n for n in base if base[n] != seeds[n]} == {"report"}
    image = keys(compile_docs("--image", "registry.test/excon:2")[0])
    assert all(base[n] != image[n] for n in base)  # a new image never reuses old results


def test_gpus_and_methods_options(compile_docs):
    spec, _ = compile_docs("--gpus", "2", "--methods", "supcon", "excon")
    # two GPUs on one node: a one-node TrainJob with two processes
    job = tasks(spec)["pretrain-excon-seed0"]["inputs"]["parameters"]["job_manifest"]
    trainer = json.loads(job["runtimeValue"]["constant"])["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (1, 2)
    assert not any(name.endswith("-ce-seed0") for name in tasks(spec))
    report_inputs = tasks(spec)["report"]["inputs"]["artifacts"]
    assert set(report_inputs) == {
        f"{m}_{p}"
        for m in ("supcon", "excon")
        for p in ("calibration", "robustness", "explanations")
    }


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--set", "train.epochs=-1"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["compile", "-o", str(tmp_path / "p.json")]) == 2
    assert "must end in .yaml" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ValueError, match="methods"):
        build_pipeline(load_config(None), methods=["simclr"])


def test_submit_to_an_unreachable_host_is_one_clear_line(capsys):
    from pipelines.cli import main

    assert main(["submit", "--host", "http://127.0.0.1:9", "--experiment", "t"]) == 2
    err = capsys.readouterr().err
    assert "could not submit to Kubeflow Pipelines at http://127.0.0.1:9" in err
    assert main(["submit", "--host", "http://x", "--node-selector", "[1]"]) == 2
    assert "--node-selector: expected a JSON dict" in capsys.readouterr().err


def test_several_gpus_run_pretrain_as_a_trainjob(compile_docs, compiled):
    spec, _ = compile_docs("--image", "registry.test/excon:1", "--nodes", "2", "--gpus", "4")
    task = tasks(spec)["pretrain-excon-seed0"]
    params = task["inputs"]["parameters"]
    job = json.loads(params["job_manifest"]["runtimeValue"]["constant"])
    assert job["kind"] == "TrainJob" and job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert (job["spec"]["trainer"]["numNodes"], job["spec"]["trainer"]["numProcPerNode"]) == (2, 4)
    assert job["spec"]["activeDeadlineSeconds"] == 72 * 3600  # the task's own deadline
    # the exit handler deletes the run's TrainJobs still running
    assert constants(spec, "finish-run")["job_kinds"] == [
        ["trainer.kubeflow.org", "v1alpha1", "trainjobs"]
    ]
    assert params["staging_url"] == {"componentInputParameter": "staging_url"}  # flattened
    assert params["node_selector"] == {"componentInputParameter": "gpu_node_selector"}
    # the launcher needs no GPU; the job's pods do, and probe/evaluations keep one each
    assert "accelerator" not in executor(spec, "pretrain-excon-seed0")["resources"]
    assert executor(spec, "probe-excon-seed0")["resources"]["accelerator"]["resourceCount"] == "1"
    assert task["retryPolicy"]["maxRetryCount"] == 2
    # eight processes are another experiment than one: no cache hit across them
    assert params["job_manifest"] != tasks(compiled[0])["pretrain-excon-seed0"]["inputs"][
        "parameters"
    ].get("job_manifest")
    assert keys(spec)["report"] != keys(compiled[0])["report"]


def test_submit_with_several_gpus_needs_a_staging_url(capsys):
    from pipelines.cli import main

    assert main(["submit", "--host", "http://x", "--nodes", "2"]) == 2
    assert "--staging-url" in capsys.readouterr().err


def test_no_task_takes_a_per_run_input(compiled):
    """KFP's own cache fingerprint hashes a task's inputs: none may differ between runs (the run
    name comes from the pod's workflow label instead), or nothing would ever be cached."""
    spec, platform = compiled
    text = json.dumps(spec["root"]["dag"])
    assert "pipeline_job_uuid" not in text and "parent_run_id" not in text
    for task in tasks(spec):
        (env,) = k8s(platform, spec, task)["fieldPathAsEnv"]
        assert env == {
            "name": "EXCON_PIPELINE_RUN",
            "fieldPath": "metadata.labels['workflows.argoproj.io/workflow']",
        }


def test_registrations_run_one_after_another(compiled):
    spec, _ = compiled
    deps = {n: set(t.get("dependentTasks", [])) for n, t in tasks(spec).items()}
    assert "register-ce" in deps["register-supcon"] and "register-supcon" in deps["register-excon"]
    assert not deps["register-ce"] & {"register-supcon", "register-excon"}


def test_every_seed_is_an_iteration_gathered_by_one_report(compile_docs):
    """study.seeds is a ParallelFor; the report and each method's register take every seed's
    artifacts (dsl.Collected), as dvc.yaml's one report and one register stage do."""
    spec, _ = compile_docs("--set", "study.seeds=[0, 1, 2]")
    flat = tasks(spec)
    runs = {n for n in flat if n.startswith("probe-")}
    assert runs == {f"probe-{m}-seed{k}" for m in METHODS for k in (0, 1, 2)}
    assert constants(spec, "probe-supcon-seed2")["seed"] == 2
    gathered = flat["report"]["inputs"]["artifacts"]["excon_robustness"]["taskOutputArtifacts"]
    assert [a["producerTask"] for a in gathered] == [
        f"evaluate-robustness-excon-seed{k}" for k in (0, 1, 2)
    ]
    models = flat["register-ce"]["inputs"]["artifacts"]["model"]["taskOutputArtifacts"]
    assert [a["producerTask"] for a in models] == [f"pretrain-ce-seed{k}" for k in (0, 1, 2)]
    assert "seed" not in constants(spec, "register-ce")  # it registers every seed of ce


def test_an_exit_handler_ends_the_run_whatever_happened(compiled):
    spec, platform = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish-run"}  # every other task is inside
    finish = root["finish-run"]
    assert finish["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    status = finish["inputs"]["parameters"]["status"]
    assert status == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert not finish.get("cachingOptions", {}).get("enableCache")
    # one GPU per pretrain task: no training job to delete
    assert constants(spec, "finish-run")["job_kinds"] == []
    assert k8s(platform, spec, "finish-run")["secretAsEnv"]  # it reaches MLflow


def test_tracking_off_ends_the_study_at_the_report(compile_docs):
    spec, _ = compile_docs("--set", "tracking.enabled=false")
    assert "report" in tasks(spec) and not any(n.startswith("register-") for n in tasks(spec))
    assert "deploy" not in tasks(spec)


def test_deploy_runs_only_when_the_register_chain_promoted(compiled):
    """Each register passes on the last version promoted so far (`promoted_before`); deploy
    takes the last register's answer and sits under a condition on it being non-empty."""
    spec, platform = compiled
    flat = tasks(spec)
    for before, after in (
        ("register-ce", "register-supcon"),
        ("register-supcon", "register-excon"),
    ):
        given = flat[after]["inputs"]["parameters"]["promoted_before"]
        assert given == {
            "taskOutputParameter": {"producerTask": before, "outputParameterKey": "Output"}
        }
    assert "promoted_before" not in flat["register-ce"]["inputs"]["parameters"]
    deploy = flat["deploy"]
    assert "register-excon" in deploy["dependentTasks"]
    assert deploy["inputs"]["parameters"]["model_uri"] == {
        "taskOutputParameter": {"producerTask": "register-excon", "outputParameterKey": "Output"}
    }
    # the condition: the dsl.If sub-DAG holding deploy tests register-excon's answer
    (holder,) = [
        c for c in spec["components"].values() if "deploy" in c.get("dag", {}).get("tasks", {})
    ]
    conditions = [
        t["triggerPolicy"]["condition"]
        for c in spec["components"].values()
        for t in c.get("dag", {}).get("tasks", {}).values()
        if "triggerPolicy" in t and "condition" in t["triggerPolicy"]
    ]
    assert conditions == ["inputs.parameter_values['pipelinechannel--register-excon-Output'] != ''"]
    assert k8s(platform, spec, "deploy")["securityContext"]["runAsNonRoot"] is True
    assert holder["dag"]["tasks"]["deploy"]["inputs"]["parameters"]["image"]


def test_no_deploy_without_a_cluster(tmp_path):
    """kfp.local (run-local) has no cluster: its pipeline ends at the registers."""
    import yaml

    from pipelines.excon_pipeline import Resources, compile_pipeline

    cfg = load_config(ROOT / "params.yaml")
    out = compile_pipeline(cfg, tmp_path / "p.yaml", resources=Resources(deploy=False))
    spec = next(yaml.safe_load_all(out.read_text()))
    assert "register-excon" in tasks(spec) and "deploy" not in tasks(spec)


def test_duplicate_methods_are_refused():
    with pytest.raises(ValueError, match="methods"):
        build_pipeline(load_config(None), methods=["ce", "ce"])


def test_cache_keys_follow_the_component_code(tmp_path):
    import shutil

    import components
    from pipelines import dag

    assert Path(components.__file__).resolve().parent in dag.code_roots()
    copy = Path(shutil.copytree(dag.code_roots()[1], tmp_path / "components"))
    before = dag.code_digest([copy])
    probe = copy / "probe" / "component.py"
    probe.write_text(probe.read_text() + "\n# changed\n")
    assert dag.code_digest([copy]) != before


def test_task_sizes_are_options(compile_docs, capsys):
    spec, _ = compile_docs("--gpu-cpu", "4", "--gpu-memory", "24Gi", "--shm-size", "4Gi",
                           "--cpu", "1", "--memory", "2Gi")  # fmt: skip
    gpu = executor(spec, "probe-ce-seed0")["resources"]
    assert (gpu["resourceCpuLimit"], gpu["resourceMemoryLimit"]) == ("4", "24Gi")
    cpu = executor(spec, "report")["resources"]
    assert (cpu["resourceCpuLimit"], cpu["resourceMemoryLimit"]) == ("1", "2Gi")
    from pipelines.cli import main

    assert main(["compile", "-o", "x.yaml", "--shm-size", "32Gi", "--gpu-memory", "24Gi"]) == 2
    assert "must be below --gpu-memory" in capsys.readouterr().err


def constants(spec: dict, task: str) -> dict:
    params = tasks(spec)[task]["inputs"]["parameters"]
    return {k: v["runtimeValue"]["constant"] for k, v in params.items() if "runtimeValue" in v}


def test_each_task_gets_its_slice_code_version_method_and_seed(compile_docs, code_versions):
    from excon.config import load_config
    from pipelines import dag
    from pipelines.cli import CLUSTER

    spec, _ = compile_docs()  # compiled here: the code versions are of the code as it is now
    study = load_config(Path(__file__).parents[2] / "params.yaml", CLUSTER).to_dict()
    for name in tasks(spec):
        if name == "start-tracking":  # uncached: the whole study, for the parent run's name
            assert set(constants(spec, name)) == {"config"}
            continue
        if name == "finish-run":  # the exit handler: the run's status and its job kinds
            assert set(constants(spec, name)) == {"job_kinds"}
            continue
        if name == "deploy":  # uncached: the promoted version (upstream) and serving options
            assert set(constants(spec, name)) == {"image"}
            continue
        stage, _, run = name.partition("-seed")[0].rpartition("-")
        stage, method = (stage, run) if run in METHODS else (name, None)
        stage = stage.replace("-", "_")
        given = constants(spec, name)
        expected = dag.params_slice(study, dag.stage_params(stage, method))
        nested = json.loads(given["params"])
        flat = {
            key: nested[key] if "." not in key else nested[key.split(".")[0]][key.split(".")[1]]
            for key in expected
            if key not in ("method.name", "train.seed")
        }
        if stage == "pretrain" and method == "excon":
            expected["method"] = {k: v for k, v in expected["method"].items() if k != "name"}
        assert flat == {k: v for k, v in expected.items() if k in flat}, name
        assert set(flat) == set(expected), name
        # stage_code.code_version of the stage, read once per session (conftest.py)
        assert given["code_version"] == code_versions[stage], name
        if method is None:
            assert "seed" not in given and "method" not in given, name
        elif stage == "register":  # one task registers every seed of its method
            assert given["method"] == method and "seed" not in given, name
        else:
            assert (given["method"], given["seed"]) == (method, 0), name
        if stage.startswith("evaluate_"):
            assert given["part"] == stage.removeprefix("evaluate_"), name


def test_pods_run_as_the_image_user_with_deadlines(compiled):
    spec, platform = compiled
    for name in tasks(spec):
        conf = k8s(platform, spec, name)
        assert conf["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }, name
        deadline = int(conf["activeDeadlineSeconds"])
        if name.startswith("pretrain-"):
            assert deadline == 72 * 3600, name  # days of training on one GPU
        elif name.split("-")[0] in ("probe", "evaluate"):
            assert deadline == 4 * 3600, name
        else:
            assert deadline == 3600, name


def test_run_settings_reach_every_task_through_the_environment(compiled):
    from pipelines.excon_pipeline import RUN_SETTINGS_ENV

    spec, _ = compiled
    for name in tasks(spec):
        env = {e["name"]: e["value"] for e in executor(spec, name).get("env", [])}
        settings = json.loads(env[RUN_SETTINGS_ENV])
        assert 'eval.shift_cache="/tmp/excon/shift"' in settings, name  # the CLUSTER preset
        assert "tracking.enabled=true" in settings and 'train.device="auto"' in settings, name
