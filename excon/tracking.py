"""MLflow tracking of the study's stages.

One MLflow *parent* run per pipeline run, one *child* run per stage and method. DVC runs every
stage in its own process, so the parent's id travels in the environment
(`EXCON_PARENT_RUN_ID`, set by `make run` through `python -m excon.tracking start-parent`);
without it, each stage's run stands alone.

Lineage on every run: the git commit (`$EXCON_GIT_COMMIT`, baked into the cluster image, else
`git rev-parse HEAD`), and for stages that read the prepared data an MLflow dataset input whose
digest is DVC's hash of it. Under DVC the default store is the repository's own `mlflow.db`, also
from a queued experiment's temporary copy of the repository (`dvc_root`).

Logging never costs finished work: the stage writes its artifacts to disk first, and a logging
failure after that is reported in one line and does not fail the stage. An unreachable tracking
server is detected before any work starts (`preflight`), in one line, unless tracking is off
(`tracking.enabled: false` or `--set tracking.enabled=false`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from excon.config import Config

PARENT_ENV = "EXCON_PARENT_RUN_ID"
# On the cluster every task of one pipeline run sees the run's name here (the Argo workflow
# label, through the downward API; kfp.local: set by `excon-pipeline run-local`). The parent run
# is found by this tag rather than passed as a task input, which would change every task's
# cache fingerprint on every run.
PIPELINE_RUN_ENV = "EXCON_PIPELINE_RUN"
PIPELINE_RUN_TAG = "excon.pipeline_run"
DEFAULT_URI = "sqlite:///mlflow.db"
# sha256 of model.safetensors, tagged on the pretrain run: how a registered version finds the
# run that trained its encoder, even when DVC reused that stage's outputs from an older run.
MODEL_SHA256_TAG = "excon.model_sha256"
# The image's commit on the cluster, where the source tree is no git checkout.
GIT_COMMIT_ENV = "EXCON_GIT_COMMIT"
# What DVC puts in a stage command's environment (dvc/env.py; dvc/stage/run.py:prepare_kwargs
# sets DVC_ROOT for every stage; dvc/repo/experiments/queue/base.py:_stash_exp adds the EXP ones
# for every `dvc exp run`: workspace, --temp and --queue alike, and points DVC_ROOT at the
# original repository, not at the executor's copy under .dvc/tmp/exps/).
DVC_ROOT_ENV = "DVC_ROOT"
DVC_EXP_NAME_ENV = "DVC_EXP_NAME"
DVC_EXP_BASELINE_ENV = "DVC_EXP_BASELINE_REV"
# System metrics (CPU, memory, GPU, disk) of training runs: a sample every 10 s, one averaged
# point every 30 s; hours of training stay a few hundred points. The environment may override.
SYSTEM_METRICS_ENV = {
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "10",
    "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "3",
}


class TrackingError(RuntimeError):
    """The tracking server cannot be used (unreachable, misconfigured)."""


class RegistryError(RuntimeError):
    """Registering or loading a model cannot proceed (tracking off, missing files, bad URI)."""


def tracking_uri(cfg: Config) -> str:
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    return anchor_sqlite(uri, dvc_root())


def dvc_root() -> Path | None:
    """The repository DVC runs this stage for: $DVC_ROOT, which `dvc exp run` sets to the
    original repository even when the stage runs in a temporary copy (`--temp`, `--queue`:
    .dvc/tmp/exps/...), deleted once the experiment is committed. None outside DVC."""
    root = os.environ.get(DVC_ROOT_ENV)
    return Path(root) if root else None


def anchor_sqlite(uri: str, root: Path | None) -> str:
    """A relative `sqlite:///file.db` names a file of the repository `root`, not of the working
    directory: under a queued experiment the working directory is a throw-away copy, and a
    relative store there would be a new empty one, deleted with the copy."""
    prefix = "sqlite:///"
    if root is None or not uri.startswith(prefix):
        return uri
    path = uri[len(prefix) :]
    if not path or path.startswith("/") or path.startswith(":memory:"):
        return uri
    return prefix + str((Path(root) / path).resolve())


def dvc_experiment() -> str | None:
    """The name of the DVC experiment this stage runs in (`dvc exp run`, any mode), else None."""
    if not (os.environ.get(DVC_EXP_NAME_ENV) or os.environ.get(DVC_EXP_BASELINE_ENV)):
        return None
    return os.environ.get(DVC_EXP_NAME_ENV) or "unnamed"


def _mlflow() -> Any:
    # Imported lazily: mlflow costs ~2 s to import, and tracking-off runs never need it.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    for key, value in SYSTEM_METRICS_ENV.items():
        os.environ.setdefault(key, value)
    # Store creation and migrations log at INFO on every new SQLite file: noise in stage logs.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    return mlflow


def configure(cfg: Config) -> Any:
    """Point mlflow at the configured store and experiment; returns the mlflow module."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    return mlflow


def preflight(cfg: Config) -> None:
    """Fail fast, in one line, when tracking is on but the store cannot be reached."""
    if not cfg.tracking.enabled:
        return
    uri = tracking_uri(cfg)
    try:
        _reachable(uri)
        mlflow = configure(cfg)
        set_experiment(mlflow, cfg)
    except Exception as e:  # any failure here means "cannot track": say which store and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable ({first}); start it, point "
            "MLFLOW_TRACKING_URI elsewhere, or pass --set tracking.enabled=false"
        ) from None


def _reachable(uri: str, timeout: float = 4.0) -> None:
    """A TCP connect to an http(s) tracking server: MLflow's client retries an unreachable
    host with backoff for most of a minute before it gives up; this answers in seconds."""
    import socket
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in getproxies() and not proxy_bypass(parts.hostname):
        return  # reached through a proxy: only MLflow's own request can tell
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise OSError(f"cannot connect to {parts.hostname}:{port}: {e.strerror or e}") from None


def set_experiment(mlflow: Any, cfg: Config) -> Any:
    """mlflow.set_experiment, creating a missing experiment of a local SQLite store with its
    artifacts beside the store file. MLflow's default is ./mlruns of the working directory at
    creation time, which for a queued DVC experiment is the temporary copy (deleted)."""
    name = cfg.tracking.experiment
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        store = Path(uri[len("sqlite:///") :]).resolve()
        folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        with contextlib.suppress(Exception):  # created meanwhile by a concurrent stage
            mlflow.create_experiment(
                name, artifact_location=(store.parent / "mlruns" / folder).as_uri()
            )
    return mlflow.set_experiment(name)


def git_commit() -> str | None:
    """$EXCON_GIT_COMMIT (the image's commit on the cluster) wins over the checkout's HEAD."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV].strip()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def data_hash(data_dir: Path) -> str | None:
    """DVC's hash of the prepared directory when dvc.lock records it, else the sha256 of its
    manifest (which lists the sha256 of every file)."""
    lock = Path("dvc.lock")
    if lock.is_file():
        import yaml

        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("prepare", {}).get("outs", []):
            if Path(out.get("path", "")) == Path(data_dir):
                return out.get("md5")
    manifest = Path(data_dir) / "manifest.json"
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    return None


def file_sha256(*paths: Path) -> str:
    """sha256 over the bytes of `paths`, in order (a model's identity: its weight files)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def commit_tags(commit: str | None) -> dict[str, str]:
    """The commit under our tag and MLflow's own (which its UI links to the source)."""
    return {"git.commit": commit, "mlflow.source.git.commit": commit} if commit else {}


def log_dataset(mlflow: Any, cfg: Config, data_dir: Path, digest: str | None, context: str) -> None:
    """The prepared data as the run's MLflow dataset input: name = the dataset, source = the
    prepared directory, digest = its DVC hash (MLflow keeps 36 characters: a DVC directory
    hash `<md5>.dir` fits; the full hash is the input's `excon.data_hash` tag)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": local either way
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(data_dir).resolve()))
    name = _manifest(data_dir).get("dataset") or cfg.data.dataset
    dataset = MetaDataset(source, name=name, digest=digest[:36] if digest else None)
    mlflow.log_input(dataset, context=context, tags={"excon.data_hash": digest or "unknown"})


def _manifest(data_dir: Path) -> dict:
    try:
        return json.loads((Path(data_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def flatten(cfg: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()}


class StageRun:
    """A child run for one stage; every call is a no-op when tracking is off, and a logging
    failure is reported once and then ignored so the stage's results on disk stay valid."""

    def __init__(self, mlflow: Any | None, run_id: str | None) -> None:
        self._mlflow, self.run_id = mlflow, run_id
        self._failed = False

    def _safely(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._mlflow is None or self._failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._failed = True
            print(f"[tracking] {what} failed, results kept on disk only: {e}", file=sys.stderr)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {
            _metric_key(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numeric and self._mlflow is not None:
            self._safely("log_metrics", self._mlflow.log_metrics, numeric, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if tags and self._mlflow is not None:
            self._safely("set_tags", self._mlflow.set_tags, tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_file() and self._mlflow is not None:
            self._safely("log_artifact", self._mlflow.log_artifact, str(path), artifact_path)

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir() and self._mlflow is not None:
            self._safely("log_artifacts", self._mlflow.log_artifacts, str(path), artifact_path)


def _metric_key(key: str) -> str:
    # MLflow keys allow / . - _ and spaces: ours fit, this only guards odd characters.
    return "".join(c if c.isalnum() or c in "/._- " else "_" for c in key)


@contextlib.contextmanager
def stage_run(
    cfg: Config,
    stage: str,
    method: str | None = None,
    data_dir: Path | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """A child run (of $EXCON_PARENT_RUN_ID when set) tagged with stage, method, seed, git
    commit and the prepared data's hash, with every parameter logged and the prepared data as
    its dataset input. `system_metrics`: MLflow samples CPU/GPU/memory while the run lasts
    (when psutil is installed)."""
    if not cfg.tracking.enabled:
        yield StageRun(None, None)
        return
    mlflow = configure(cfg)
    try:
        experiment = set_experiment(mlflow, cfg)
        parent = os.environ.get(PARENT_ENV) or _pipeline_parent(mlflow, experiment)
        tags = {"excon.stage": stage, "excon.seed": str(cfg.train.seed)}
        if method:
            tags["excon.method"] = method
        if parent:
            tags["mlflow.parentRunId"] = parent
        tags.update(commit_tags(git_commit()))
        digest = data_hash(data_dir) if data_dir is not None else None
        if digest:
            tags["excon.data_hash"] = digest
        name = f"{stage}-{method}" if method else stage
        monitor = system_metrics and importlib.util.find_spec("psutil") is not None
        run = mlflow.start_run(run_name=name, tags=tags, log_system_metrics=monitor)
    except Exception as e:
        print(f"[tracking] could not start a run, results kept on disk only: {e}", file=sys.stderr)
        yield StageRun(None, None)
        return
    tracker = StageRun(mlflow, run.info.run_id)
    params = {
        k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(cfg).items()
    }
    tracker._safely("log_params", mlflow.log_params, params)
    if data_dir is not None:
        try:  # lineage is worth a warning, not the run's metrics: not through _safely
            log_dataset(mlflow, cfg, Path(data_dir), digest, stage)
        except Exception as e:
            print(f"[tracking] log_input failed, no dataset input: {e}", file=sys.stderr)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)


def _pipeline_parent(mlflow: Any, experiment: Any) -> str | None:
    """The parent run that start_parent made for $EXCON_PIPELINE_RUN, if any."""
    pipeline_run = os.environ.get(PIPELINE_RUN_ENV)
    if not pipeline_run:
        return None
    found = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' "
        "and tags.`excon.stage` = 'pipeline'",
        max_results=1,
        output_format="list",
    )
    return found[0].info.run_id if found else None


def start_parent(cfg: Config, keep_running: bool = False) -> str:
    """Create the parent run of one pipeline run and return its id (tagged with
    $EXCON_PIPELINE_RUN when set, so the run's tasks find it). `keep_running`: left RUNNING
    for the pipeline's exit handler to end with the pipeline's status (end_parent)."""
    preflight(cfg)
    mlflow = configure(cfg)
    experiment = set_experiment(mlflow, cfg)
    tags = {"excon.stage": "pipeline", **commit_tags(git_commit())}
    if os.environ.get(PIPELINE_RUN_ENV):
        tags[PIPELINE_RUN_TAG] = os.environ[PIPELINE_RUN_ENV]
    if keep_running:  # the client API: the fluent one ends its active run at process exit
        tags["mlflow.runName"] = f"study-{cfg.data.dataset}"
        return mlflow.MlflowClient().create_run(experiment.experiment_id, tags=tags).info.run_id
    run = mlflow.start_run(run_name=f"study-{cfg.data.dataset}", tags=tags)
    mlflow.end_run()
    return run.info.run_id


def end_parent(cfg: Config, status: str, reason: str = "") -> str | None:
    """End the parent run of $EXCON_PIPELINE_RUN with `status` (FINISHED, FAILED, KILLED),
    tagging `reason`; returns its id, None when there is none (tracking off, or the pipeline
    failed before start-tracking made it)."""
    if not cfg.tracking.enabled:
        return None
    mlflow = configure(cfg)
    parent = _pipeline_parent(mlflow, set_experiment(mlflow, cfg))
    if parent is None:
        return None
    client = mlflow.MlflowClient()
    if reason:
        client.set_tag(parent, "excon.pipeline_error", reason[:5000])
    client.set_terminated(parent, status=status)
    return parent


def main(argv: list[str] | None = None) -> int:
    """`python -m excon.tracking start-parent`: print a new parent run id (empty when off)."""
    from excon.config import load_config

    args = sys.argv[1:] if argv is None else argv
    if args != ["start-parent"]:
        print("usage: python -m excon.tracking start-parent", file=sys.stderr)
        return 2
    cfg = load_config("params.yaml" if Path("params.yaml").is_file() else None)
    if not cfg.tracking.enabled:
        return 0
    try:
        print(start_parent(cfg))
    except TrackingError as e:
        print(f"excon: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
