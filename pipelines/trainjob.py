"""Pre-training on several GPUs or nodes as a Kubeflow Trainer v2 TrainJob.

`render` builds the TrainJob at compile time (image, nodes, GPUs per node, resources) from the
Trainer API's typed models, referencing the `torch-distributed` ClusterTrainingRuntime that
Kubeflow Trainer installs: the runtime's torch plugin starts `numNodes` pods and sets PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads, so
`excon pretrain` runs unchanged, one process per GPU, DDP over the global batch.

`launch` runs inside the pipeline's pretrain task: it stages the prepared dataset and the
parameters in S3, creates the job (owned by the pipeline run's Argo Workflow, so Kubernetes
deletes it with the run), watches it with the Kubeflow SDK's TrainerClient and fetches the run
rank 0 mirrored back to S3. SIGTERM (a cancelled run, a deadline) deletes the job before the task
exits. No science here.

Why not TrainerClient.train: it builds the TrainJob itself from a CustomTrainerContainer, which
takes env as plain strings (no secretKeyRef: the S3 and MLflow credentials would be copied into
the object in clear) and metadata as name, labels and annotations only (no ownerReferences).
So the TrainJob is made of the SDK's typed models (kubeflow_trainer_api) and created with the
Kubernetes CustomObjectsApi; TrainerClient watches and deletes it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubeflow_trainer_api import models as m

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
KIND = (GROUP, VERSION, PLURAL)  # what the exit handler deletes when still running
RUNTIME = "torch-distributed"  # kubeflow/trainer manifests/base/runtimes/torch_distributed.yaml
NODE = "node"  # that runtime's replicated job and trainer container
MANAGER = "excon.io/pretrain-launcher"  # owner of our runtime patch (keyed by manager)
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WORKFLOW = ("argoproj.io", "v1alpha1", "workflows")
UID = 10001  # the image's user (infra/docker/Dockerfile)
# Kubernetes secrets (infra/k8s) -> the variables boto3 and MLflow read; optional ones may be
# absent from the secret. secretKeyRef, so no credential is written into the TrainJob.
SECRET_ENV = {
    "excon-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                 "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"],
    "excon-mlflow": ["MLFLOW_TRACKING_URI"],
}  # fmt: skip
OPTIONAL_SECRET_ENV = {"excon-mlflow": ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]}
# The pod's script. No workingDir: the runtime would create it as root inside the /tmp volume,
# unwritable for UID 10001. Rank 0 uploads its checkpoint every epoch; a restarted pod (each
# node) fetches it before training, so every rank resumes from the same epoch. Rank 0 mirrors
# the finished run to $EXCON_STAGE_URL/run (storage.artifacts_url), which the launcher fetches.
SCRIPT = """\
mkdir -p /tmp/work && cd /tmp/work
python -m excon.storage download "$EXCON_STAGE_URL/data" data
python -m excon.storage download "$EXCON_STAGE_URL/params" params
torchrun -m excon.cli pretrain --method "$EXCON_METHOD" --data data \\
  --run-dir run --params params/params.yaml --resume-compatible \\
  --checkpoint-url "$EXCON_STAGE_URL/checkpoint" \\
  --set "storage.artifacts_url=$EXCON_STAGE_URL"
"""


class JobError(RuntimeError):
    """The TrainJob failed, timed out or could not be created; one line says which."""


def _env(
    name: str, value: str = "", secret: str = "", optional: bool = False
) -> m.IoK8sApiCoreV1EnvVar:
    if not secret:
        return m.IoK8sApiCoreV1EnvVar(name=name, value=value)
    ref = m.IoK8sApiCoreV1SecretKeySelector(name=secret, key=name, optional=optional or None)
    return m.IoK8sApiCoreV1EnvVar(
        name=name, valueFrom=m.IoK8sApiCoreV1EnvVarSource(secretKeyRef=ref)
    )


def _trainer(
    image: str, nodes: int, gpus: int, resources: dict[str, str]
) -> m.TrainerV1alpha1Trainer:
    env = [_env("EXCON_STAGE_URL", "s3://set-by-the-launcher"), _env("EXCON_METHOD", "excon"),
           _env("EXCON_PIPELINE_RUN"), _env("HOME", "/tmp")]  # fmt: skip
    env += [_env(k, secret=s) for s, keys in SECRET_ENV.items() for k in keys]
    env += [
        _env(k, secret=s, optional=True) for s, keys in OPTIONAL_SECRET_ENV.items() for k in keys
    ]
    return m.TrainerV1alpha1Trainer(
        image=image,
        command=["sh", "-ec"],
        args=[SCRIPT],
        numNodes=nodes,
        numProcPerNode=gpus,  # torchrun: one process per GPU
        resourcesPerNode=m.IoK8sApiCoreV1ResourceRequirements.from_dict(
            {"requests": resources, "limits": resources}
        ),
        env=env,
    )


def _pod_patch(
    shm_size: str, node_selector: dict, tolerations: list
) -> m.TrainerV1alpha1RuntimePatch:
    """What the pods need beyond the runtime's template: non-root, a writable /tmp under a
    read-only root filesystem, an in-memory /dev/shm (DataLoader workers and NCCL), GPU nodes."""
    container = m.TrainerV1alpha1ContainerPatch(
        name=NODE,
        securityContext=m.IoK8sApiCoreV1SecurityContext(
            allowPrivilegeEscalation=False,
            readOnlyRootFilesystem=True,
            capabilities=m.IoK8sApiCoreV1Capabilities(drop=["ALL"]),
        ),
        volumeMounts=[m.IoK8sApiCoreV1VolumeMount(name="scratch", mountPath="/tmp"),
                      m.IoK8sApiCoreV1VolumeMount(name="dshm", mountPath="/dev/shm")],
    )  # fmt: skip
    pod = m.TrainerV1alpha1PodSpecPatch(
        securityContext=m.IoK8sApiCoreV1PodSecurityContext(
            runAsNonRoot=True,
            runAsUser=UID,
            runAsGroup=UID,
            fsGroup=UID,
            seccompProfile=m.IoK8sApiCoreV1SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=[
            m.IoK8sApiCoreV1Volume.from_dict({"name": "scratch", "emptyDir": {}}),
            m.IoK8sApiCoreV1Volume.from_dict(
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}
            ),
        ],
        nodeSelector=dict(node_selector),
        tolerations=[m.IoK8sApiCoreV1Toleration.from_dict(t) for t in tolerations],
        containers=[container],
    )
    template = m.TrainerV1alpha1JobSetTemplatePatch(
        spec=m.TrainerV1alpha1JobSetSpecPatch(
            replicatedJobs=[
                m.TrainerV1alpha1ReplicatedJobPatch(
                    name=NODE,
                    template=m.TrainerV1alpha1JobTemplatePatch(
                        spec=m.TrainerV1alpha1JobSpecPatch(
                            template=m.TrainerV1alpha1PodTemplatePatch(spec=pod)
                        )
                    ),
                )
            ]
        )
    )
    return m.TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        trainingRuntimeSpec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(template=template),
    )


def render(
    image: str,
    nodes: int,
    gpus: int,
    accelerator: str = "nvidia.com/gpu",
    cpu: str = "8",
    memory: str = "48Gi",
    shm_size: str = "16Gi",
    deadline_s: int = 72 * 3600,
) -> dict:
    """The TrainJob (as its JSON manifest) for `nodes` pods of `gpus` GPUs each. Name, labels,
    owner, scheduling and the run's variables are set by `launch`."""
    if nodes < 1 or gpus < 1:
        raise ValueError(f"nodes and gpus must be >= 1, got nodes={nodes} gpus={gpus}")
    resources = {"cpu": cpu, "memory": memory, accelerator: str(gpus)}
    job = m.TrainerV1alpha1TrainJob(
        apiVersion=f"{GROUP}/{VERSION}",
        kind="TrainJob",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name="excon-pretrain",
            labels={
                "app.kubernetes.io/name": "excon-pretrain",
                "app.kubernetes.io/part-of": "excon",
            },
        ),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtimeRef=m.TrainerV1alpha1RuntimeRef(
                name=RUNTIME, kind="ClusterTrainingRuntime", apiGroup=GROUP
            ),
            trainer=_trainer(image, nodes, gpus, resources),
            # The whole job, all restarts included: a hung NCCL rank must not hold GPUs forever.
            activeDeadlineSeconds=deadline_s,
            runtimePatches=[_pod_patch(shm_size, {}, [])],
        ),
    )
    return job.to_dict()


def _pod(job: m.TrainerV1alpha1TrainJob) -> m.TrainerV1alpha1PodSpecPatch:
    (patch,) = [p for p in job.spec.runtime_patches or [] if p.manager == MANAGER]
    (rjob,) = patch.training_runtime_spec.template.spec.replicated_jobs
    return rjob.template.spec.template.spec


def stage_of(job: m.TrainerV1alpha1TrainJob) -> str:
    env = job.spec.trainer.env or []
    return next((e.value or "" for e in env if e.name == "EXCON_STAGE_URL"), "")


def state_of(job: m.TrainerV1alpha1TrainJob) -> tuple[str | None, str]:
    """('Complete' | 'Failed' | None while running, the condition's message)."""
    for c in reversed((job.status.conditions or []) if job.status else []):
        if c.status == "True" and c.type in ("Complete", "Failed"):
            return c.type, c.message or ""
    return None, ""


def prepare(
    manifest: dict,
    name: str,
    env: dict[str, str],
    labels: dict[str, str],
    node_selector: dict,
    tolerations: list,
    owner: m.IoK8sApimachineryPkgApisMetaV1OwnerReference | None,
) -> m.TrainerV1alpha1TrainJob:
    """The compiled TrainJob for one run: its name, labels, owner, the run's variables and the
    pipeline's GPU scheduling."""
    job = m.TrainerV1alpha1TrainJob.from_dict(copy.deepcopy(manifest))
    job.metadata.name = name
    job.metadata.labels = {**(job.metadata.labels or {}), **labels}
    job.metadata.owner_references = [owner] if owner else None
    for var in job.spec.trainer.env:
        if var.name in env:
            var.value = env[var.name]
    pod = _pod(job)
    pod.node_selector = dict(node_selector)
    pod.tolerations = [m.IoK8sApiCoreV1Toleration.from_dict(t) for t in tolerations]
    return job


def workflow_owner(
    api: Any, namespace: str, run_id: str
) -> m.IoK8sApimachineryPkgApisMetaV1OwnerReference | None:
    """An ownerReference to the pipeline run's Argo Workflow (named after the run), so deleting
    the run deletes its jobs; None, with a warning, when the Workflow cannot be read."""
    try:
        workflow = api.get_namespaced_custom_object(*WORKFLOW[:2], namespace, WORKFLOW[2], run_id)
    except Exception as e:
        print(f"[trainjob] no owner for the job: Workflow {namespace}/{run_id}: {_first(e)}",
              file=sys.stderr)  # fmt: skip
        return None
    return m.IoK8sApimachineryPkgApisMetaV1OwnerReference(
        apiVersion=f"{WORKFLOW[0]}/{WORKFLOW[1]}",
        kind="Workflow",
        name=workflow["metadata"]["name"],
        uid=workflow["metadata"]["uid"],
        # true would need `update workflows/finalizers`; the garbage collector deletes either way
        blockOwnerDeletion=False,
    )


def _first(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def create_or_adopt(api: Any, job: m.TrainerV1alpha1TrainJob, base: str, namespace: str,
                    attempts: int = 10) -> str:  # fmt: skip
    """Create the job as <base>-0, or, when a retried task finds its predecessor's job there,
    wait on that one (running, or complete with its run still staged) rather than fail with
    AlreadyExists; after a failed one, or a complete one whose run was already fetched and
    deleted, create <base>-1 (and so on), which resumes from the staged checkpoint. Returns the
    name of the job to wait on."""
    from excon.storage import object_exists

    stage = stage_of(job)
    for attempt in range(attempts):
        name = f"{base}-{attempt}"
        job.metadata.name = name
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job.to_dict())
        except Exception as e:
            if getattr(e, "status", None) != 409:  # kubernetes ApiException: AlreadyExists
                raise JobError(
                    f"could not create TrainJob {namespace}/{name}: {_first(e)}"
                ) from None
            existing = m.TrainerV1alpha1TrainJob.from_dict(
                api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            )
            if stage_of(existing) != stage:  # the name keeps 8 characters of the run's name
                raise JobError(
                    f"TrainJob {namespace}/{name} exists for another run "
                    f"({stage_of(existing)}, not {stage}); delete it or rename this run"
                ) from None
            state, _ = state_of(existing)
            if state == "Failed" or (
                state == "Complete" and not object_exists(f"{stage}/run/summary.json")
            ):
                print(f"[trainjob] {namespace}/{name}: {state.lower()} before", file=sys.stderr)
                continue
            print(f"[trainjob] {namespace}/{name}: exists, waiting", file=sys.stderr, flush=True)
            return name
        print(f"[trainjob] {namespace}/{name}: created, waiting", file=sys.stderr, flush=True)
        return name
    raise JobError(f"TrainJob {namespace}/{base}: {attempts} attempts failed; giving up")


def wait(
    trainer: Any, api: Any, name: str, namespace: str, timeout_s: int, poll_s: int = 30
) -> None:
    """Wait with the Kubeflow SDK (TrainerClient.wait_for_job_status) until the job is Complete;
    a failed or timed-out job is a JobError naming the TrainJob's own reason."""
    try:
        poll = min(poll_s, max(timeout_s - 1, 1))  # the SDK wants it below the timeout
        trainer.wait_for_job_status(name, {"Complete"}, timeout=timeout_s, polling_interval=poll)
    except TimeoutError:
        raise JobError(f"TrainJob {namespace}/{name} still running after {timeout_s} s") from None
    except RuntimeError as e:  # the SDK's "TrainJob <name> is Failed", or it could not read it
        raw = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state, message = state_of(m.TrainerV1alpha1TrainJob.from_dict(raw))
        reason = message if state == "Failed" else _first(e)
        raise JobError(f"TrainJob {namespace}/{name} failed: {reason}") from None


@contextlib.contextmanager
def deleted_on_sigterm(trainer: Any, current: dict[str, str]) -> Iterator[None]:
    """While inside: SIGTERM (Argo stopping a cancelled or timed-out task's pod) deletes the job
    named current['name'], if any yet, then exits 143, so a cancelled run frees its GPUs."""

    def stop(signum: int, _frame: object) -> None:
        name = current.get("name")
        if name:
            print(f"[trainjob] SIGTERM: deleting TrainJob {name}", file=sys.stderr, flush=True)
            try:
                trainer.delete_job(name)
            except Exception as e:
                print(f"[trainjob] could not delete {name}: {_first(e)}", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def clients(namespace: str) -> tuple[Any, Any]:
    """(CustomObjectsApi, TrainerClient) in the task's pod."""
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
    from kubernetes import client, config

    config.load_incluster_config()
    return client.CustomObjectsApi(), TrainerClient(KubernetesBackendConfig(namespace=namespace))


def launch(
    manifest: dict,
    config_text: str,
    method: str,
    dataset: Path,
    out: Path,
    stage_url: str,
    run_id: str,
    node_selector: dict,
    tolerations: list,
    namespace: str = "",
    timeout_s: int = 7 * 24 * 3600,
    api: Any = None,
    trainer: Any = None,
) -> dict:
    """Stage the inputs under `stage_url/<run_id>/<method>`, run the TrainJob, fetch the run to
    `out` and delete the staged objects (kept when the job fails, to look into). Returns the
    run's summary.json. `api`, `trainer`: CustomObjectsApi and TrainerClient (default: the
    pod's in-cluster ones)."""
    from excon import stages
    from excon.storage import download_dir, upload_dir
    from pipelines import lifecycle

    if not run_id:
        raise JobError("no pipeline run name ($EXCON_PIPELINE_RUN) to keep runs' inputs apart")
    if not stage_url.startswith("s3://"):
        raise JobError(
            f"staging_url must be s3://bucket/prefix to run a TrainJob, got {stage_url!r}"
        )
    namespace = namespace or NAMESPACE_FILE.read_text().strip()
    if api is None or trainer is None:
        api, trainer = clients(namespace)
    stage = f"{stage_url.rstrip('/')}/{run_id}/{method}"
    upload_dir(dataset, f"{stage}/data")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "params.yaml").write_text(config_text)
        upload_dir(tmp, f"{stage}/params")
    job = prepare(
        manifest,
        "excon-pretrain",
        {"EXCON_STAGE_URL": stage, "EXCON_METHOD": method, "EXCON_PIPELINE_RUN": run_id},
        # the exit handler finds (and deletes) the run's jobs still running by this label
        {lifecycle.RUN_LABEL: lifecycle.run_label(run_id)},
        node_selector,
        tolerations,
        workflow_owner(api, namespace, run_id),
    )
    # a DNS label: excon-pretrain-<method>-<last 8 of the run name>-<attempt>
    tag = "".join(c for c in run_id.lower() if c.isalnum())[-8:]
    current: dict[str, str] = {}
    with deleted_on_sigterm(trainer, current):
        current["name"] = create_or_adopt(api, job, f"excon-pretrain-{method}-{tag}", namespace)
        wait(trainer, api, current["name"], namespace, int(timeout_s))
    download_dir(f"{stage}/run", out)
    summary = out / "summary.json"
    if not summary.is_file():
        raise JobError(
            f"TrainJob {current['name']} completed but {stage}/run holds no summary.json"
        )
    stages.discard_scratch(stage)  # the inputs' copy and the mirrored run are fetched
    return json.loads(summary.read_text())
