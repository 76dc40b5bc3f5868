"""Shared fixtures for the component tests: each component's `python_func` called in-process with
KFP artifact stand-ins on real local paths (a plain local uri is the artifact's `.path`), and the
inputs and $EXCON_RUN_SETTINGS the compiled pipeline would hand it
(pipelines.excon_pipeline.task_inputs, run_settings).

The chain dataset -> pretrain -> probe -> three evaluations is session-scoped, so it runs once
however many test files read it; each test writes only into its own outputs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

from components.evaluate.component import evaluate
from components.pretrain.component import pretrain
from components.probe.component import probe
from excon.config import Config, load_config
from excon.stages import numeric
from excon.tracking import PARENT_ENV
from pipelines.cli import TINY
from pipelines.excon_pipeline import RUN_SETTINGS_ENV, run_settings, task_inputs

# The tiny study `excon-pipeline run-local` runs (pipelines/cli.py's TINY), on the blobs of
# tests/conftest.py: they hold 24 training images (no data.limit_per_class, a smaller batch).
PRESET = [
    *(o for o in TINY if not o.startswith(("data.limit_per_class", "train.batch_size"))),
    "train.batch_size=16",
    "optim.lr=0.05",
    "probe.batch_size=32",
]
METHOD = "excon"  # the study's own method: the chain exercises its Grad-CAM training path
PARTS = ("calibration", "robustness", "explanations")


def artifact(cls: type, path: Path, name: str | None = None):
    """A KFP artifact stand-in whose `.path` is `path` (a plain local uri maps to itself)."""
    return cls(name=name or path.name, uri=str(path), metadata={})


def restore_parent_env(mp: pytest.MonkeyPatch) -> None:
    # setenv first so the undo restores the original state even when the variable was unset
    # (delenv of an absent variable records nothing); components set it in-process.
    mp.setenv(PARENT_ENV, "")
    mp.delenv(PARENT_ENV, raising=False)


def inputs(cfg: Config, stage: str, method: str | None = METHOD) -> dict:
    """The inputs the pipeline hands a task of `stage` (method and seed: a run's stages only;
    register: method only, it covers every seed)."""
    return task_inputs(cfg, stage, method if stage not in ("prepare", "report") else None)


@pytest.fixture
def task(make_config) -> Callable[..., dict]:
    """`task(stage, cfg=None, method="excon")`: the inputs the pipeline hands that task (cfg:
    the tests' study, make_config())."""
    return lambda stage, cfg=None, method=METHOD: inputs(cfg or make_config(), stage, method)


@pytest.fixture(autouse=True)
def _parent_env(monkeypatch, make_config) -> None:
    restore_parent_env(monkeypatch)
    monkeypatch.setenv(RUN_SETTINGS_ENV, run_settings(make_config()))


@pytest.fixture
def use_settings(monkeypatch) -> Callable[[Config], None]:
    """`use_settings(cfg)`: the tasks run with cfg's run settings (tracking, device, ...)."""
    return lambda cfg: monkeypatch.setenv(RUN_SETTINGS_ENV, run_settings(cfg))


@contextlib.contextmanager
def parent_env_restored(cfg: Config) -> Iterator[None]:
    """For the session-scoped chain, which runs before any function-scoped monkeypatch."""
    with pytest.MonkeyPatch.context() as mp:
        restore_parent_env(mp)
        mp.setenv(RUN_SETTINGS_ENV, run_settings(cfg))
        yield


@pytest.fixture
def output(tmp_path) -> Callable[[type, str], object]:
    """`output(Model, "model")`: an output artifact stand-in at tmp_path/<name>."""
    return lambda cls, name: artifact(cls, tmp_path / name, name)


@pytest.fixture(scope="session")
def make_config(tmp_path_factory) -> Callable[..., Config]:
    """`make_config(*overrides)`: the study the tests' pipeline would compile, tracking off."""
    # The default shift cache is ./data/shift: keep the corrupted sets out of the checkout.
    shift = tmp_path_factory.mktemp("shift")

    def make(*overrides: str) -> Config:
        return load_config(
            None, [*PRESET, f"eval.shift_cache={shift}", "tracking.enabled=false", *overrides]
        )

    return make


@pytest.fixture
def restore_mlflow_uri() -> Iterator[None]:
    """Components point mlflow's process-global tracking URI at their store: put it back."""
    old = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(old)


@pytest.fixture
def mlflow_store(tmp_path, restore_mlflow_uri) -> str:
    """A fresh SQLite tracking store whose `excon` experiment keeps artifacts under tmp (the
    default artifact root would be ./mlruns in the checkout)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).create_experiment(
        "excon", artifact_location=(tmp_path / "mlartifacts").as_uri()
    )
    return uri


@pytest.fixture
def tracking_on(mlflow_store) -> list[str]:
    """The overrides that turn tracking on, into `mlflow_store`."""
    return ["tracking.enabled=true", f"tracking.uri={mlflow_store}"]


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chain_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chain")


@pytest.fixture(scope="session")
def dataset(prepared, chain_root) -> Dataset:
    """The shared `prepared` blobs as a Dataset artifact (a copy: no component may write it)."""
    return artifact(Dataset, Path(shutil.copytree(prepared, chain_root / "dataset")))


@pytest.fixture(scope="session")
def pretrained(make_config, dataset, chain_root) -> tuple[Model, Metrics]:
    model = artifact(Model, chain_root / "model")
    metrics = artifact(Metrics, chain_root / "pretrain_metrics")
    cfg = make_config()
    with parent_env_restored(cfg):
        pretrain.python_func(
            **inputs(cfg, "pretrain"), dataset=dataset, model=model, metrics=metrics
        )
    return model, metrics


@pytest.fixture(scope="session")
def probed(make_config, dataset, pretrained, chain_root) -> tuple[Model, Metrics]:
    head = artifact(Model, chain_root / "probe_head")
    metrics = artifact(Metrics, chain_root / "probe_metrics")
    cfg = make_config()
    with parent_env_restored(cfg):
        probe.python_func(
            **inputs(cfg, "probe"),
            dataset=dataset,
            model=pretrained[0],
            probe_head=head,
            metrics=metrics,
        )
    return head, metrics


@pytest.fixture(scope="session")
def evaluations(
    make_config, dataset, pretrained, probed, chain_root
) -> dict[str, tuple[Artifact, Metrics, HTML]]:
    """part -> (evaluation, metrics, plots) of the evaluate component's three parts."""
    out = {}
    cfg = make_config()
    for part in PARTS:
        evaluation = artifact(Artifact, chain_root / f"{part}", "evaluation")
        metrics = artifact(Metrics, chain_root / f"{part}_metrics", "metrics")
        plots = artifact(HTML, chain_root / f"{part}.html", "plots")
        with parent_env_restored(cfg):
            evaluate.python_func(
                **inputs(cfg, f"evaluate_{part}"),
                part=part,
                dataset=dataset,
                model=pretrained[0],
                probe_head=probed[0],
                evaluation=evaluation,
                metrics=metrics,
                plots=plots,
            )
        out[part] = (evaluation, metrics, plots)
    return out


@pytest.fixture
def evaluated(evaluations) -> Callable[[str], tuple[Path, dict]]:
    """`evaluated(part)`: checks what every evaluation component promises (metrics.json logged
    on the Metrics artifact, real files, an HTML page embedding every PNG) and returns the
    part's folder and metrics.json."""

    def check(part: str) -> tuple[Path, dict]:
        evaluation, metrics, plots = evaluations[part]
        out = Path(evaluation.path)
        written = json.loads((out / "metrics.json").read_text())
        assert written["method"] == METHOD
        assert metrics.metadata == numeric(written)
        assert not any(p.is_symlink() for p in out.rglob("*"))  # the run dir was temporary
        pngs = sorted(out.glob("*.png"))
        html = Path(plots.path).read_text()
        assert pngs and html.count("data:image/png;base64,") == len(pngs)
        assert f"<title>{METHOD}: {part}</title>" in html
        return out, written

    return check
