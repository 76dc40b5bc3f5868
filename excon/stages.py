"""The study's stages as functions of (config, paths), each inside its MLflow child run.

The `excon` CLI (what dvc.yaml runs) and the Kubeflow components both call these, so a stage
means the same thing on a laptop and on the cluster. Each takes plain paths and returns its
metrics; none knows who called it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from excon.config import Config


def prepare(cfg: Config, out: Path) -> dict:
    """Prepare cfg.data.dataset into `out`; returns the manifest."""
    from excon.data.prepare import prepare_dataset

    d = cfg.data
    return prepare_dataset(
        d.dataset,
        Path(out),
        raw_dir=Path(d.raw_dir) if d.raw_dir else None,
        download=d.download,
        seed=d.seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        image_size=d.image_size,
        limit_per_class=d.limit_per_class,
    )


def pretrain(
    cfg: Config,
    data: Path,
    out: Path,
    resume: bool | str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict:
    """Pre-train cfg.method.name: params, per-epoch metrics and figures go to MLflow."""
    from excon.artifacts import MODEL_WEIGHTS
    from excon.tracking import MODEL_SHA256_TAG, file_sha256, stage_run
    from excon.train import pretrain as train

    def log_epoch(row: dict[str, Any]) -> None:
        run.log_metrics(row, step=row["epoch"])
        if on_epoch is not None:
            on_epoch(row)

    from excon.distributed import launched

    if not launched().is_main:  # under torchrun only rank 0 tracks (and writes) the run
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    with stage_run(cfg, "pretrain", cfg.method.name, data, system_metrics=True) as run:
        summary = train(cfg, data, out, resume=resume, on_epoch=log_epoch)
        run.log_metrics({"train_seconds": summary["train_seconds"]})  # the rest is per epoch
        if (out / MODEL_WEIGHTS).is_file():  # how `register` finds this run (excon.train_run_id)
            run.set_tags({MODEL_SHA256_TAG: file_sha256(out / MODEL_WEIGHTS)})
        run.log_artifacts(out / "figures", "figures")
        for name in ("summary.json", "config.json", "model.json", "metrics.jsonl"):
            run.log_artifact(out / name)
    return summary


def probe(cfg: Config, data: Path, out: Path, metrics_out: Path | None = None) -> dict:
    """Fit the linear probe on the frozen encoder of run `out`."""
    from excon.probe import probe as fit_probe
    from excon.tracking import stage_run

    with stage_run(cfg, "probe", cfg.method.name, data) as run:
        metrics = fit_probe(cfg, data, out, metrics_out)
        run.log_metrics(metrics)
        run.log_artifact(Path(metrics_out) if metrics_out else out / "metrics.json")
    return metrics


def evaluate(cfg: Config, data: Path, out: Path, parts: list[str] | None = None) -> dict:
    """Evaluate run `out`: the given parts (default all), each to <out>/eval/<part>/."""
    from excon.evaluate import PARTS
    from excon.evaluate.stage import evaluate as run_parts
    from excon.tracking import stage_run

    parts = list(parts or PARTS)
    # One child run per DAG stage: `evaluate_<part>` when a stage runs one part.
    stage = f"evaluate_{parts[0]}" if len(parts) == 1 else "evaluate"
    with stage_run(cfg, stage, cfg.method.name, data) as run:
        metrics = run_parts(cfg, data, out, parts)
        run.log_metrics(metrics)
        for part in parts:
            run.log_artifacts(out / "eval" / part, f"eval/{part}")
    return metrics


def report(cfg: Config, runs: list[Path], out: Path) -> dict:
    """Compare evaluated runs: report.md, report.json and plots in `out`."""
    from excon.evaluate.report import report as write_report
    from excon.tracking import stage_run

    with stage_run(cfg, "report") as run:
        summary = write_report(runs, out)
        run.log_artifacts(out, "report")
    return summary


def register(
    cfg: Config,
    run: Path,
    data: Path | None = None,
    source: str | None = None,
    record: Path | str | None = "registered.json",
) -> dict:
    """Register run `run` behind the promotion gate; writes the result to <run>/<record>
    (None: nowhere, for callers that record several runs themselves)."""
    from excon.artifacts import write_json
    from excon.registry import register as register_model

    result = register_model(cfg, run, data, source)
    if record is not None:
        write_json(run / record, result)
    return result


def link_run(
    run: Path, *sources: Path, evals: dict[str, Path] | None = None, copy: bool = False
) -> Path:
    """Make `run` a run directory out of symlinks: every entry of each source directory (a later
    source wins) and `eval/<part>` -> evals[part]. Orchestrators hand a stage its inputs as
    separate artifact directories; the stages read one run directory. `copy` copies instead
    (MLflow refuses to log files that resolve outside the logged directory)."""
    import shutil

    run.mkdir(parents=True, exist_ok=True)
    links = {entry.name: entry for source in sources for entry in sorted(Path(source).iterdir())}
    links.update({f"eval/{part}": Path(path) for part, path in (evals or {}).items()})
    for name, target in links.items():
        link = run / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        if not copy:
            os.symlink(target.resolve(), link)
        elif target.is_dir():
            shutil.copytree(target, link, dirs_exist_ok=True)
        else:
            shutil.copy2(target, link)
    return run


def restore_checkpoint(url: str, run: Path) -> bool:
    """Fetch `url`/checkpoint.pt into `run` when a previous attempt left one there (a retried
    cluster task starts in a fresh pod); returns whether one was found."""
    from excon.storage import download_file, object_exists

    source = f"{url.rstrip('/')}/checkpoint.pt"
    if not object_exists(source):
        return False
    run.mkdir(parents=True, exist_ok=True)
    download_file(source, run / "checkpoint.pt")
    return True


def save_checkpoint(url: str, run: Path) -> None:
    """Upload run/checkpoint.pt to `url` (after every epoch), so a retry resumes from it."""
    from excon.storage import upload_file

    upload_file(run / "checkpoint.pt", f"{url.rstrip('/')}/checkpoint.pt")


def discard_scratch(url: str) -> None:
    """Delete the scratch objects under `url` (a retry's checkpoint, a job's staged inputs)
    once the run they served is complete. A failure only warns: the result is already safe."""
    from excon.storage import StorageError, delete_prefix

    try:
        delete_prefix(url)
    except StorageError as e:
        print(f"warning: left scratch objects under {url}: {e}", file=sys.stderr)


def evaluate_part(cfg: Config, data: Path, sources: list[Path], part: str, out: Path) -> dict:
    """Evaluate one part of the run made of `sources` (encoder, probe head), writing the part's
    files (metrics.json, CSVs, PNGs) to `out`; for orchestrators passing artifact directories."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run = link_run(Path(tmp) / "run", *sources)
        metrics = evaluate(cfg, data, run, [part])
        shutil.copytree(run / "eval" / part, out, dirs_exist_ok=True)
    return metrics


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict (what metric loggers accept)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
