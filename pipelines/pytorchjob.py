"""Pre-training on several GPUs or nodes as a Kubeflow Training Operator PyTorchJob.

`render` fills infra/k8s/training/pytorchjob.yaml at compile time (image, GPUs per pod, pods,
resources); `launch` runs inside the pipeline's pretrain task: it stages the prepared dataset and
the parameters in S3, creates the job, waits for it and fetches the trained run, which rank 0 of
the job mirrored back to S3. No science here: the pods run `torchrun -m excon.cli pretrain`.
"""

import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "training" / "pytorchjob.yaml"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
KIND = (GROUP, VERSION, PLURAL)  # what the exit handler deletes when still running
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class JobError(RuntimeError):
    """The PyTorchJob failed, timed out or could not be created; one line says which."""


def render(
    image: str,
    nodes: int,
    gpus: int,
    accelerator: str = "nvidia.com/gpu",
    cpu: str = "8",
    memory: str = "48Gi",
    shm_size: str = "16Gi",
    template: Path = TEMPLATE,
) -> dict:
    """The PyTorchJob for `nodes` pods of `gpus` GPUs each (one process per GPU)."""
    if nodes < 1 or gpus < 1:
        raise ValueError(f"nodes and gpus must be >= 1, got nodes={nodes} gpus={gpus}")
    if not template.is_file():
        raise FileNotFoundError(f"{template}: the PyTorchJob template (compile from a checkout)")
    job = yaml.safe_load(template.read_text())
    specs = job["spec"]["pytorchReplicaSpecs"]
    for role in specs:  # the template's replicas share one pod via a YAML anchor: unshare
        specs[role]["template"] = copy.deepcopy(specs[role]["template"])
    job["spec"]["nprocPerNode"] = str(gpus)
    if nodes == 1:
        del specs["Worker"]
    else:
        specs["Worker"]["replicas"] = nodes - 1
    for spec in specs.values():
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        container["image"] = image
        for key in ("requests", "limits"):
            res = container["resources"][key]
            res.pop("nvidia.com/gpu", None)
            res.update({"cpu": cpu, "memory": memory, accelerator: gpus})
        for volume in pod["volumes"]:
            if volume["name"] == "dshm":
                volume["emptyDir"]["sizeLimit"] = shm_size
    return job


def _set_env(job: dict, values: dict[str, str]) -> None:
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        env = spec["template"]["spec"]["containers"][0]["env"]
        for item in env:
            if item["name"] in values:
                item["value"] = values[item["name"]]


def _set_scheduling(job: dict, node_selector: dict, tolerations: list) -> None:
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        pod["nodeSelector"] = dict(node_selector)
        pod["tolerations"] = list(tolerations)


def job_state(job: dict) -> str | None:
    """'Succeeded' or 'Failed' once the operator says so, else None (still running)."""
    for condition in reversed(job.get("status", {}).get("conditions", [])):
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            return condition["type"]
    return None


def wait(api: Any, name: str, namespace: str, timeout_s: float, poll_s: float = 30.0) -> dict:
    """Poll the job until it succeeds (returned) or fails or times out (JobError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = job_state(job)
        if state == "Succeeded":
            return job
        if state == "Failed":
            reason = job["status"]["conditions"][-1].get("message", "")
            raise JobError(f"PyTorchJob {namespace}/{name} failed: {reason}")
        if time.monotonic() > deadline:
            raise JobError(f"PyTorchJob {namespace}/{name} still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _stage_of(job: dict) -> str:
    env = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    return next((e.get("value", "") for e in env if e["name"] == "EXCON_STAGE_URL"), "")


def create_or_adopt(api: Any, job: dict, base: str, namespace: str, attempts: int = 10) -> str:
    """Create the job as <base>-0, or, when a retried task finds its predecessor's job there,
    wait on that one (running, or succeeded with its run still staged) rather than fail with
    AlreadyExists; after a failed one, or a succeeded one whose run was already fetched and
    deleted, create <base>-1 (and so on), which resumes from the staged checkpoint. Returns the
    name of the job to wait on."""
    from excon.storage import object_exists

    stage = _stage_of(job)
    for attempt in range(attempts):
        name = f"{base}-{attempt}"
        job["metadata"]["name"] = name
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        except Exception as e:
            if getattr(e, "status", None) != 409:  # kubernetes ApiException: AlreadyExists
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise JobError(f"could not create PyTorchJob {namespace}/{name}: {first}") from None
            existing = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            if _stage_of(existing) != stage:  # the name keeps 8 characters of the run's name
                raise JobError(
                    f"PyTorchJob {namespace}/{name} exists for another run "
                    f"({_stage_of(existing)}, not {stage}); delete it or rename this run"
                ) from None
            state = job_state(existing)
            if state == "Failed" or (
                state == "Succeeded" and not object_exists(f"{stage}/run/summary.json")
            ):
                print(f"[pytorchjob] {namespace}/{name}: {state.lower()} before", file=sys.stderr)
                continue
            print(f"[pytorchjob] {namespace}/{name}: exists, waiting", file=sys.stderr, flush=True)
            return name
        print(f"[pytorchjob] {namespace}/{name}: created, waiting", file=sys.stderr, flush=True)
        return name
    raise JobError(f"PyTorchJob {namespace}/{base}: {attempts} attempts failed; giving up")


def launch(
    job: dict,
    config_text: str,
    method: str,
    dataset: Path,
    out: Path,
    stage_url: str,
    run_id: str,
    node_selector: dict,
    tolerations: list,
    namespace: str = "",
    timeout_s: float = 7 * 24 * 3600,
    api: Any = None,
) -> dict:
    """Stage the inputs under `stage_url/<run_id>/<method>`, run `job`, fetch the run to `out`
    and delete the staged objects (kept when the job fails, to look into). Returns the run's
    summary.json."""
    from excon import stages
    from excon.storage import download_dir, upload_dir
    from pipelines import lifecycle

    if not run_id:
        raise JobError("no pipeline run name ($EXCON_PIPELINE_RUN) to keep runs' inputs apart")
    if not stage_url.startswith("s3://"):
        raise JobError(
            f"staging_url must be s3://bucket/prefix to run a PyTorchJob, got {stage_url!r}"
        )
    stage = f"{stage_url.rstrip('/')}/{run_id}/{method}"
    upload_dir(dataset, f"{stage}/data")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "params.yaml").write_text(config_text)
        upload_dir(tmp, f"{stage}/params")
    job = copy.deepcopy(job)
    _set_env(
        job,
        {"EXCON_STAGE_URL": stage, "EXCON_METHOD": method, "EXCON_PIPELINE_RUN": run_id},
    )
    _set_scheduling(job, node_selector, tolerations)
    # the exit handler finds (and deletes) the run's jobs still running by this label
    job["metadata"].setdefault("labels", {})[lifecycle.RUN_LABEL] = lifecycle.run_label(run_id)
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    namespace = namespace or NAMESPACE_FILE.read_text().strip()
    # a DNS label: excon-pretrain-<method>-<last 8 of the run name>-<attempt>
    tag = "".join(c for c in run_id.lower() if c.isalnum())[-8:]
    name = create_or_adopt(api, job, f"excon-pretrain-{method}-{tag}", namespace)
    wait(api, name, namespace, timeout_s)
    download_dir(f"{stage}/run", out)
    summary = out / "summary.json"
    if not summary.is_file():
        raise JobError(f"PyTorchJob {name} succeeded but {stage}/run holds no summary.json")
    stages.discard_scratch(stage)  # the inputs' copy and the mirrored run are fetched
    return json.loads(summary.read_text())
