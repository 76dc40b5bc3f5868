"""The study as a KFP v2 pipeline, the same DAG as dvc.yaml:

    exit handler (finish-run: ends the MLflow parent with the run's status) around
    start_tracking -> prepare -> ParallelFor seed in study.seeds:
        pretrain-<m> -> probe-<m> -> evaluate-{calibration,robustness,explanations}-<m>
    -> report (every method x seed, dsl.Collected) -> register-<m> (every seed, in order)

for each method m, unrolled at compile time into tasks named `<stage>-<method>` (one copy per seed
iteration) so the cluster UI shows each one. The study's parameters (params.yaml + --set) are
compiled in; the pipeline's run-time parameters only place the work (GPU node selector and
tolerations) or make it resumable (checkpoint_url) and stage it (staging_url).

What a task is handed decides when it is served from cache. A KFP 2.17 backend ignores the
compiled `cache_key`: its driver fingerprints a task by its inputs (parameter values, and input
artifacts by their MLMD ids), its output spec, command + args and image
(kubeflow/pipelines 2.17.0, backend/src/v2/driver/cache.go `getFingerPrint` ->
backend/src/v2/cacheutils/cache.go `GenerateCacheKey`). So each cached task's inputs are exactly
what decides its result:
- `params`: its slice of the study parameters (dag.stage_params, the table dvc.yaml shares),
- `code_version`: the hash of the excon source its stage runs (stage_code.code_version, the
  files dvc.yaml lists as its code deps; the component's own body is in its command),
- `method` and `seed` for the stages of one run, and its upstream artifacts: an upstream task
  served from cache hands on the same artifact ids, one that ran hands on new ones (a Merkle
  chain, as DVC's lock file is).
Settings that change how a task runs, not what it computes (RUN_SETTINGS), reach it through the
environment, which the fingerprint does not read. `cache_key` stays for kfp.local and backends
that honour it.
"""

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl, kubernetes

from components import DEFAULT_IMAGE
from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.finish_run.component import finish_run
from components.prepare.component import prepare
from components.pretrain.component import pretrain
from components.pretrain_job.component import pretrain_job
from components.probe.component import probe
from components.register.component import register
from components.report.component import report
from components.start_tracking.component import start_tracking
from excon.config import Config
from pipelines import dag, trainjob
from pipelines.stage_code import code_version

PIPELINE_NAME = "excon-study"
# Kubernetes secrets (infra/k8s) -> the environment variables boto3, DVC and MLflow read.
S3_SECRET = "excon-s3"
S3_KEYS = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
]
MLFLOW_SECRET = "excon-mlflow"
MLFLOW_KEYS = ["MLFLOW_TRACKING_URI"]
MLFLOW_OPTIONAL_KEYS = ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
PIPELINE_RUN_ENV = "EXCON_PIPELINE_RUN"
PIPELINE_RUN_FIELD = "metadata.labels['workflows.argoproj.io/workflow']"
DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# The image's user (infra/docker/Dockerfile: USER 10001:10001).
IMAGE_UID = 10001
# Parameters that change how a task runs, never what it computes (excon/train.py's _RESUME_FREE
# and where results are logged or mirrored): `--set` overrides in $EXCON_RUN_SETTINGS, JSON. The
# environment is no part of the driver's fingerprint, so changing the device, the MLflow server
# or the worker count reuses every cached result; as params (inputs) they would rerun the study.
# tests/pipelines/test_kfp_fingerprint.py holds that every key of the Config is a run setting,
# in some stage's slice, or a task input (method.name, train.seed).
RUN_SETTINGS_ENV = "EXCON_RUN_SETTINGS"
RUN_SETTINGS = (
    "data.prepared_dir",
    "data.num_workers",
    "train.device",
    "train.compile",
    "train.runs_dir",
    "eval.shift_cache",
    "tracking",
    "storage",
)
# Keys every run stage gets as inputs of their own (`method`, `seed`), never in a slice.
TASK_INPUT_KEYS = ("method.name", "train.seed")


@dataclass(frozen=True)
class Resources:
    """Where and with what the tasks run. GPU tasks: pretrain, probe and the evaluations."""

    gpus: int = 1  # per pretrain pod; probe and evaluations use one
    nodes: int = 1  # nodes x gpus > 1: pretrain runs as a TrainJob (pipelines/trainjob.py)
    accelerator: str = "nvidia.com/gpu"
    gpu_cpu: str = "8"
    gpu_memory: str = "48Gi"
    # DataLoader workers pass batches through /dev/shm, which is 64 MiB in a container.
    shm_size: str = "16Gi"
    cpu: str = "2"
    memory: str = "8Gi"
    pretrain_retries: int = 2
    # Pod deadlines (activeDeadlineSeconds, per attempt): pretraining may take days on one GPU
    # (ExCon on CIFAR-100, 200 epochs); the other stages take minutes to an hour, and a hung one
    # must not hold a GPU overnight.
    pretrain_timeout_s: int = 72 * 3600
    gpu_timeout_s: int = 4 * 3600  # probe and the evaluations
    cpu_timeout_s: int = 3600  # prepare (downloads included), report, register, start-tracking
    secrets: bool = True  # off for kfp.local, which has no cluster to read them from
    # Seeds trained at once (ParallelFor parallelism; 0: all). kfp.local on a laptop: 1.
    seed_parallelism: int = 0
    # Roll each promoted version out to the InferenceService (infra/k8s/serving). Off for
    # kfp.local, which has no cluster to deploy to (`excon serve` is the laptop's server).
    deploy: bool = True


def named(component: Callable, name: str) -> Callable:
    """`component` under another name: KFP names a task after its component, so per-method
    copies give tasks named `pretrain-excon` etc. in the spec, the UI and kfp.local's log,
    instead of `pretrain`, `pretrain-2`, `pretrain-3`."""
    twin = copy.deepcopy(component)
    twin.component_spec.name = name
    twin.name = name
    return twin


def task_params(cfg: Config, stage: str, method: str | None = None) -> str:
    """The `params` input of a task: its stage's slice of `cfg` as nested JSON (a Config text
    for excon.config.loads_config), sorted so that equal slices compile to equal text."""
    nested: dict[str, Any] = {}
    for key, value in dag.params_slice(cfg.to_dict(), dag.stage_params(stage, method)).items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {}).update({name: value} if name else value)
    for key in TASK_INPUT_KEYS:  # inputs of their own, not parameters of the stage
        section, _, name = key.partition(".")
        nested.get(section, {}).pop(name, None)
    return json.dumps(nested, sort_keys=True)


def task_inputs(
    cfg: Config,
    stage: str,
    method: str | None = None,
    version: str | None = None,
    seed: Any = None,
) -> dict[str, Any]:
    """What decides a task's result besides its upstream artifacts (see the module docstring):
    its parameter slice, its code version and, for the stages of one run, method and seed
    (`seed`: the pipeline's seed-loop item; default cfg.train.seed). A register task covers
    every seed of its method: no seed."""
    given = {
        "params": task_params(cfg, stage, method),
        "code_version": version or code_version(stage),
    }
    if method is not None:
        given["method"] = method
        if stage != "register":
            given["seed"] = cfg.train.seed if seed is None else seed
    return given


def run_settings(cfg: Config) -> str:
    """$EXCON_RUN_SETTINGS: the RUN_SETTINGS of `cfg` as a JSON list of `--set` overrides."""
    values = dag.params_slice(cfg.to_dict(), list(RUN_SETTINGS))
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update({f"{key}.{k}": v for k, v in value.items()} if "." not in key else {key: value})
    return json.dumps([f"{k}={json.dumps(v)}" for k, v in sorted(flat.items())])


@dataclass(frozen=True)
class Placement:
    """The pipeline's run-time parameters that place a run's GPU work."""

    node_selector: Any
    tolerations: Any
    checkpoint_url: Any
    staging_url: Any


@dataclass(frozen=True)
class Run:
    """One run's tasks (one method, one seed of the loop)."""

    pretrain: dsl.PipelineTask
    probe: dsl.PipelineTask
    evaluations: dict[str, dsl.PipelineTask]


@dataclass
class _Tasks:
    """Builds the pipeline's tasks: what every task shares (image, caching, resources, pod
    security, environment, secrets) and one run's chain (pretrain -> probe -> evaluations)."""

    cfg: Config
    image: str
    resources: Resources
    job_manifest: str | None
    settings: str = ""
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def inputs(self, stage: str, method: str | None = None, seed: Any = None) -> dict[str, Any]:
        return task_inputs(self.cfg, stage, method, self.versions[stage], seed)

    def common(
        self, task: dsl.PipelineTask, name: str, cache: str | bool | None, timeout_s: int
    ) -> dsl.PipelineTask:
        """`cache`: a key (cached under it), True (cached by the backend's fingerprint only) or
        None (never cached)."""
        resources = self.resources
        task.set_display_name(name)
        task.set_container_image(self.image)
        if cache is None:
            task.set_caching_options(False)
        elif cache is True:
            task.set_caching_options(True)
        else:
            task.set_caching_options(True, cache_key=cache)
        task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
        task.set_cpu_limit(resources.cpu).set_memory_limit(resources.memory)
        task.set_env_variable(RUN_SETTINGS_ENV, self.settings)
        kubernetes.set_security_context(
            task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True
        )
        kubernetes.set_timeout(task, timeout_s)
        # Which pipeline run this is, from the pod's Argo workflow label (not an input: inputs
        # enter KFP's cache fingerprint, and a per-run value would defeat every cache hit).
        kubernetes.use_field_path_as_env(task, PIPELINE_RUN_ENV, PIPELINE_RUN_FIELD)
        # Scratch space: the launcher, temp dirs, downloads and the shift cache live in /tmp,
        # writable even where the image's root filesystem is not.
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path="/tmp")
        if resources.secrets:
            kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_KEYS})
            kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_KEYS})
            kubernetes.use_secret_as_env(
                task, MLFLOW_SECRET, {k: k for k in MLFLOW_OPTIONAL_KEYS}, optional=True
            )
        return task

    def on_gpu(self, task: dsl.PipelineTask, placement: Placement, gpus: int = 1) -> None:
        resources = self.resources
        task.set_accelerator_type(resources.accelerator)
        task.set_accelerator_limit(gpus)
        task.set_cpu_request(resources.gpu_cpu).set_cpu_limit(resources.gpu_cpu)
        task.set_memory_request(resources.gpu_memory).set_memory_limit(resources.gpu_memory)
        kubernetes.add_node_selector_json(task, placement.node_selector)
        kubernetes.add_toleration_json(task, placement.tolerations)
        kubernetes.empty_dir_mount(
            task,
            volume_name="dshm",
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=resources.shm_size,
        )

    def pretrain(self, m: str, seed: Any, data: dsl.PipelineTask, where: Placement) -> Any:
        resources, name = self.resources, f"pretrain-{m}"
        if self.job_manifest is None:
            pre = named(pretrain, name)(
                **self.inputs("pretrain", m, seed),
                dataset=data.outputs["dataset"],
                checkpoint_url=where.checkpoint_url,
            )
            self.common(pre, name, True, resources.pretrain_timeout_s)
            self.on_gpu(pre, where, resources.gpus)
        else:  # several GPUs or nodes: this task launches and awaits a Kubeflow TrainJob
            pre = named(pretrain_job, name)(
                **self.inputs("pretrain", m, seed),
                dataset=data.outputs["dataset"],
                job_manifest=self.job_manifest,  # its process count is part of the fingerprint
                staging_url=where.staging_url,
                node_selector=where.node_selector,
                tolerations=where.tolerations,
            )
            self.common(pre, name, True, resources.pretrain_timeout_s)
        pre.set_retry(resources.pretrain_retries, backoff_duration="60s", backoff_factor=2)
        return pre

    def run(self, m: str, seed: Any, data: dsl.PipelineTask, where: Placement) -> Run:
        """One run's chain, inside the seed loop. Cached by the backend's fingerprint alone:
        a compiled cache_key is one constant for every iteration of the loop, so a backend that
        honours it would hand seed 1 the results of seed 0."""
        pre = self.pretrain(m, seed, data, where)
        name = f"probe-{m}"
        lin = named(probe, name)(
            **self.inputs("probe", m, seed),
            dataset=data.outputs["dataset"],
            model=pre.outputs["model"],
        )
        self.common(lin, name, True, self.resources.gpu_timeout_s)
        self.on_gpu(lin, where)
        parts = {}
        for part in dag.PARTS:
            name = f"evaluate-{part}-{m}"
            ev = named(evaluate, name)(
                **self.inputs(f"evaluate_{part}", m, seed),
                part=part,
                dataset=data.outputs["dataset"],
                model=pre.outputs["model"],
                probe_head=lin.outputs["probe_head"],
            )
            self.common(ev, name, True, self.resources.gpu_timeout_s)
            self.on_gpu(ev, where)
            parts[part] = ev
        return Run(pre, lin, parts)


def _job_manifest(image: str, resources: Resources) -> str | None:
    """The TrainJob pretrain launches when it needs several GPUs or nodes, else None."""
    if resources.nodes * resources.gpus == 1:
        return None
    job = trainjob.render(
        image,
        resources.nodes,
        resources.gpus,
        resources.accelerator,
        resources.gpu_cpu,
        resources.gpu_memory,
        resources.shm_size,
        resources.pretrain_timeout_s,  # the job's deadline: the launching task's own
    )
    return json.dumps(job, sort_keys=True)


def build_pipeline(
    cfg: Config,
    methods: Sequence[str] = dag.METHODS,
    image: str = DEFAULT_IMAGE,
    resources: Resources | None = None,
) -> Callable:
    """A pipeline function for `cfg` (compiled in) over `methods` x study.seeds."""
    resources = resources or Resources()
    unknown = [m for m in methods if m not in dag.METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods: got {list(methods)}, allowed {', '.join(dag.METHODS)}")
    seeds = list(cfg.study.seeds)
    b = _Tasks(cfg, image, resources, _job_manifest(image, resources))
    b.settings = run_settings(cfg)
    b.versions = {stage: code_version(stage) for stage in dag.STAGE_PARAMS}
    report_key = _report_key(cfg, methods, image, resources, b.versions)
    job_kinds = [list(trainjob.KIND)] if b.job_manifest else []
    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=True)  # start-tracking only: uncached

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="ExCon vs SupCon vs cross-entropy: train, probe, evaluate, report, register.",
    )
    def excon_study(
        gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_TOLERATIONS,
        checkpoint_url: str = "",
        staging_url: str = "",
        serving_gpus: int = 0,
        canary_traffic_percent: int = 0,
    ) -> None:
        where = Placement(gpu_node_selector, gpu_tolerations, checkpoint_url, staging_url)
        # Runs whatever becomes of the study; it may depend on no task (KFP's rule for exit
        # tasks), so it finds the MLflow parent by the pipeline run's name, as the tasks do.
        finish = finish_run(job_kinds=job_kinds)
        b.common(finish, "finish-run", None, resources.cpu_timeout_s)
        with dsl.ExitHandler(finish, name="study"):
            # A new parent run per pipeline run: never cached.
            tracking = start_tracking(config=config_text)
            b.common(tracking, "start-tracking", None, resources.cpu_timeout_s)
            data = prepare(**b.inputs("prepare"))
            prep_key = dag.cache_key("prepare", None, cfg.to_dict(), _code(b.versions, "prepare"),
                                     image, [])  # fmt: skip
            b.common(data, "prepare", prep_key, resources.cpu_timeout_s).after(tracking)
            with dsl.ParallelFor(seeds, parallelism=resources.seed_parallelism, name="seeds") as k:
                runs = {m: b.run(m, k, data, where) for m in methods}
            rep = report(
                **b.inputs("report"),
                **{
                    f"{m}_{part}": dsl.Collected(ev.outputs["evaluation"])
                    for m in methods
                    for part, ev in runs[m].evaluations.items()
                },
            )
            b.common(rep, "report", report_key, resources.cpu_timeout_s)
            if cfg.tracking.enabled:  # registering needs MLflow: else the study ends here
                last = _register(b, methods, data, runs, rep)
                if resources.deploy:
                    _deploy(b, last, serving_gpus, canary_traffic_percent)

    return excon_study


def _register(b: _Tasks, methods: Sequence[str], data: Any, runs: dict[str, Run], rep: Any) -> Any:
    """One register task per method over all its seeds, one after another as dvc.yaml's single
    register stage orders them (methods, then seeds): each gate reads the champion the one
    before may have just moved, so parallel registrations would race. Never cached: each
    changes the registry."""
    previous = None
    for m in methods:
        name = f"register-{m}"
        run = runs[m]
        # Chained: each passes on the last promotion so far (and so runs after the one before).
        chain = {} if previous is None else {"promoted_before": previous.outputs["Output"]}
        reg = named(register, name)(
            **b.inputs("register", m),
            dataset=data.outputs["dataset"],
            model=dsl.Collected(run.pretrain.outputs["model"]),
            probe_head=dsl.Collected(run.probe.outputs["probe_head"]),
            report=rep.outputs["table"],
            **{p: dsl.Collected(ev.outputs["evaluation"]) for p, ev in run.evaluations.items()},
            **chain,
        )
        b.common(reg, name, None, b.resources.cpu_timeout_s)
        previous = reg
    return previous


def _deploy(b: _Tasks, last: Any, gpus: Any, canary_percent: Any) -> None:
    """Roll the run's last promotion out to the InferenceService, only when there was one
    (dsl.If needs a parameter: the register chain's answer). Never cached: it changes the
    cluster. Its pod needs the deployer Role of infra/k8s/serving/base/rbac.yaml."""
    with dsl.If(last.outputs["Output"] != "", name="promoted"):
        task = deploy(
            model_uri=last.outputs["Output"],
            image=b.image,
            gpus=gpus,
            canary_traffic_percent=canary_percent,
        )
        b.common(task, "deploy", None, b.resources.cpu_timeout_s)


def _code(versions: dict[str, str], stage: str) -> str:
    # The components' and pipelines' own source: a component's body is its command (the
    # backend's fingerprint has it), but a custom cache_key replaces the command in kfp.local's.
    return f"{versions[stage]}:{dag.code_digest(dag.code_roots()[1:])}"


def _report_key(
    cfg: Config,
    methods: Sequence[str],
    image: str,
    resources: Resources,
    versions: dict[str, str],
) -> str:
    """The report's cache_key: a Merkle chain over every run's stages (method x seed), as
    dvc.yaml's lock file chains them. The runs' own tasks carry no compiled key (see
    _Tasks.run), but their keys still decide the report's."""
    config = cfg.to_dict()

    def key(stage: str, method: str | None, seed: int | None, *upstream: str) -> str:
        return dag.cache_key(stage, method, config, _code(versions, stage), image, list(upstream),
                             seed)  # fmt: skip

    prep = key("prepare", None, None)
    evals = []
    for m in methods:
        for k in cfg.study.seeds:
            # the number of processes changes BN statistics and augmentation streams
            pre = key("pretrain", m, k, prep, f"processes={resources.nodes * resources.gpus}")
            lin = key("probe", m, k, prep, pre)
            evals += [key(f"evaluate_{p}", m, k, lin) for p in dag.PARTS]
    return key("report", None, None, *evals)


def compile_pipeline(
    cfg: Config,
    out: Path,
    methods: Sequence[str] = dag.METHODS,
    image: str = DEFAULT_IMAGE,
    resources: Resources | None = None,
) -> Path:
    """Compile to a pipeline package (YAML: PipelineSpec + PlatformSpec), written atomically."""
    import os

    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{out}: a pipeline package must end in .yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # kfp insists on the suffix
    try:
        pipeline = build_pipeline(cfg, methods, image, resources)
        compiler.Compiler().compile(pipeline, package_path=str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
