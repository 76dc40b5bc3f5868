"""`excon-pipeline`: compile the study's KFP pipeline, submit it to a cluster, or run it here.

excon-pipeline compile -o excon_pipeline.yaml [--set train.epochs=200] [--image IMG]
excon-pipeline submit --host URL --experiment NAME [--set ...] [--token T] [--namespace NS]
excon-pipeline run-local [--set ...]      # kfp.local, this Python, tiny settings
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from components import DEFAULT_IMAGE
from excon.config import Config, ConfigError, load_config
from pipelines import dag

DEFAULT_PARAMS = "params.yaml"
# What `run-local` changes on top of params.yaml: the whole DAG in a few minutes on 2 cores
# (the same tiny study tests/test_dvc_pipeline.py runs through DVC).
TINY = [
    "data.limit_per_class=30",
    "model.width=0.0625",
    "model.proj_dim=8",
    "method.exp_epochs=0",
    "method.grid_images=2",
    "train.epochs=1",
    "train.batch_size=32",
    "train.max_steps_per_epoch=2",
    "train.device=cpu",
    "probe.epochs=2",
    "probe.lrs=[0.1]",
    "eval.eps=[4]",
    "eval.pgd_steps=2",
    "eval.attack_images=16",
    "eval.corruptions=[contrast]",
    "eval.severities=[1, 5]",
    "eval.shift_images=8",
    "eval.expl_images=16",
    "eval.deletion_steps=4",
    "eval.grid_images=2",
]
# On the cluster, downloads and corrupted sets go to the pod's scratch space (the image's root
# filesystem may be read-only; --set data.raw_dir=... to point at mounted files instead), and
# MLflow is found through $MLFLOW_TRACKING_URI (a secret).
CLUSTER = ["eval.shift_cache=/tmp/excon/shift", "data.raw_dir=/tmp/excon/raw"]


def _config(args: argparse.Namespace, extra: list[str]) -> Config:
    params = args.params
    if params is None and Path(DEFAULT_PARAMS).is_file():
        params = DEFAULT_PARAMS
    # Every seed of study.seeds is an iteration of the pipeline's seed loop; --seed K runs one.
    seed = [f"study.seeds=[{args.seed}]"] if args.seed is not None else []
    return load_config(params, [*extra, *args.overrides, *seed])


def _json_arg(text: str, kind: type, flag: str) -> object:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag}: not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{flag}: expected a JSON {kind.__name__}, got {text!r}")
    return value


def _resources(args: argparse.Namespace) -> object:
    from pipelines.excon_pipeline import Resources

    # The in-memory /dev/shm counts against the pod's memory limit: it must leave room.
    if _gib(args.shm_size) >= _gib(args.gpu_memory):
        raise ConfigError(
            f"--shm-size {args.shm_size} must be below --gpu-memory {args.gpu_memory} "
            "(an in-memory emptyDir counts against the pod's memory limit)"
        )
    return Resources(
        gpus=args.gpus,
        nodes=args.nodes,
        accelerator=args.accelerator,
        shm_size=args.shm_size,
        gpu_cpu=args.gpu_cpu,
        gpu_memory=args.gpu_memory,
        cpu=args.cpu,
        memory=args.memory,
    )


def _gib(quantity: str) -> float:
    """A Kubernetes memory quantity (Gi, Mi, G, M or bytes) in GiB."""
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix) and quantity[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(quantity[: -len(suffix)]) * factor
    if quantity.isdigit():
        return int(quantity) / 2**30
    raise ConfigError(f"{quantity!r}: expected a memory quantity such as 16Gi or 512Mi")


def _cluster_config(args: argparse.Namespace) -> Config:
    cfg = _config(args, CLUSTER)
    uri = cfg.tracking.uri
    if cfg.tracking.enabled and uri and not uri.startswith(("http://", "https://")):
        print(
            f"warning: tracking.uri={uri} is local to this machine; on the cluster leave it "
            "null so tasks use MLFLOW_TRACKING_URI from the excon-mlflow secret",
            file=sys.stderr,
        )
    return cfg


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.excon_pipeline import compile_pipeline

    out = compile_pipeline(
        _cluster_config(args), Path(args.output), args.methods, args.image, _resources(args)
    )
    print(f"compiled {len(args.methods)} methods -> {out} (image {args.image})")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import kfp

    from pipelines.excon_pipeline import compile_pipeline

    arguments: dict[str, object] = {
        "checkpoint_url": args.checkpoint_url,
        "staging_url": args.staging_url,
    }
    if not args.host:
        raise ConfigError("no Kubeflow Pipelines host: pass --host URL or set $KFP_HOST")
    if args.image == DEFAULT_IMAGE:
        print(
            f"warning: --image is the placeholder {DEFAULT_IMAGE}; push the project image "
            "(infra/docker) and pass --image or set $EXCON_IMAGE",
            file=sys.stderr,
        )
    if args.nodes * args.gpus > 1 and not args.staging_url:
        raise ConfigError("--nodes x --gpus > 1 runs pretrain as a TrainJob: give --staging-url")
    if args.node_selector is not None:
        arguments["gpu_node_selector"] = _json_arg(args.node_selector, dict, "--node-selector")
    if args.tolerations is not None:
        arguments["gpu_tolerations"] = _json_arg(args.tolerations, list, "--tolerations")
    cfg = _cluster_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(
            cfg, Path(tmp) / "excon_pipeline.yaml", args.methods, args.image, _resources(args)
        )
        try:
            client = kfp.Client(host=args.host, existing_token=args.token, namespace=args.namespace)
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=args.run_name
                or f"excon-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
                experiment_name=args.experiment,
                namespace=args.namespace,
            )
        except Exception as e:  # kfp raises urllib3/ApiException/ValueError: one line for all
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConnectionError(
                f"could not submit to Kubeflow Pipelines at {args.host}: {first}"
            ) from None
    print(f"submitted run {run.run_id} to {args.host} (experiment {args.experiment})")
    if args.host:
        print(f"watch it: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    """The whole DAG through kfp.local's SubprocessRunner in this Python environment."""
    from kfp import local

    from pipelines.excon_pipeline import Resources, build_pipeline

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # Its own MLflow store and shift cache, so tiny models never enter the study's registry.
    local_state = [
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"eval.shift_cache={root / 'shift'}",
    ]
    cfg = _config(args, [*([] if args.full else TINY), *local_state])
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "artifacts"),
        raise_on_error=True,
    )
    # One seed at a time: the runs share this machine's cores.
    local_resources = Resources(secrets=False, seed_parallelism=1, deploy=False)
    pipeline = build_pipeline(cfg, args.methods, DEFAULT_IMAGE, local_resources)
    # The tasks (subprocesses) inherit this: on a cluster it comes from the pod's labels.
    os.environ["EXCON_PIPELINE_RUN"] = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    start = time.perf_counter()
    pipeline()
    print(
        f"kfp.local: pipeline finished in {time.perf_counter() - start:.0f} s; "
        f"artifacts under {root / 'artifacts'}, MLflow store {root / 'mlflow.db'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="excon-pipeline", description="The excon study as a Kubeflow Pipelines v2 DAG."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: object, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        p.add_argument("--params", help=f"params file (default: ./{DEFAULT_PARAMS} if present)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one study parameter (repeatable); compiled into the pipeline",
        )
        p.add_argument("--methods", nargs="+", default=list(dag.METHODS), choices=dag.METHODS)
        p.add_argument(
            "--seed",
            type=int,
            help="train this seed only (default: every seed of study.seeds, in parallel)",
        )
        return p

    def cluster_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--image",
            default=os.environ.get("EXCON_IMAGE", DEFAULT_IMAGE),
            help="project image for every task (default: $EXCON_IMAGE, else %(default)s)",
        )
        p.add_argument("--gpus", type=int, default=1, help="GPUs per pretrain pod")
        p.add_argument(
            "--nodes",
            type=int,
            default=1,
            help="pretrain pods; nodes x gpus > 1 runs pretrain as a Kubeflow TrainJob (DDP)",
        )
        p.add_argument("--accelerator", default="nvidia.com/gpu", help="GPU resource name")
        p.add_argument("--shm-size", default="16Gi", help="in-memory /dev/shm per GPU task")
        p.add_argument("--gpu-cpu", default="8", help="CPU request and limit of a GPU task")
        p.add_argument("--gpu-memory", default="48Gi", help="memory of a GPU task (incl. shm)")
        p.add_argument("--cpu", default="2", help="CPU request and limit of the other tasks")
        p.add_argument("--memory", default="8Gi", help="memory of the other tasks")

    p = command("compile", cmd_compile, "compile the pipeline to a YAML package")
    p.add_argument("-o", "--output", default="excon_pipeline.yaml")
    cluster_options(p)

    p = command("submit", cmd_submit, "compile and submit a run to a Kubeflow Pipelines host")
    p.add_argument(
        "--host",
        default=os.environ.get("KFP_HOST"),
        help="KFP API endpoint, e.g. http://localhost:8080 (default: $KFP_HOST)",
    )
    p.add_argument("--experiment", default="excon", help="KFP experiment name")
    p.add_argument("--run-name", help="default: excon-<dataset>-<timestamp>")
    p.add_argument(
        "--token",
        default=os.environ.get("KFP_TOKEN"),
        help="bearer token for a multi-user cluster (default: $KFP_TOKEN)",
    )
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument(
        "--checkpoint-url", default="", help="s3://bucket/prefix: pretrain resumes from here"
    )
    p.add_argument(
        "--staging-url", default="", help="s3://bucket/prefix: a TrainJob's inputs and outputs"
    )
    p.add_argument("--node-selector", help='JSON, e.g. \'{"nvidia.com/gpu.present": "true"}\'')
    p.add_argument("--tolerations", help="JSON list of tolerations for the GPU tasks")
    cluster_options(p)

    p = command("run-local", cmd_run_local, "run the whole DAG here through kfp.local")
    p.add_argument("--root", default="runs/kfp-local", help="artifacts and MLflow store")
    p.add_argument("--full", action="store_true", help="params as given, not the tiny preset")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, ConnectionError, ValueError, FileNotFoundError) as e:
        print(f"excon-pipeline: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
