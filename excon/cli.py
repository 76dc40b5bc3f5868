"""`excon <stage>`: the single entry point to every stage of the study."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from excon import stages
from excon.config import DATASETS, METHODS, Config, ConfigError, load_config
from excon.evaluate import PARTS
from excon.fs import (
    LOCK_NAME,
    FsError,
    check_free_space,
    check_writable,
    clean_leftovers,
    dir_lock,
)

DEFAULT_PARAMS = "params.yaml"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params",
        default=None,
        help=f"YAML params file (default: ./{DEFAULT_PARAMS} when present, else built-in defaults)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter, e.g. --set train.epochs=10 (repeatable)",
    )


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    params = args.params
    if params is None and Path(DEFAULT_PARAMS).is_file():
        params = DEFAULT_PARAMS
    return load_config(params, [*args.overrides, *(extra or [])])


def data_dir(cfg: Config, given: str | None) -> Path:
    return Path(given) if given else Path(cfg.data.prepared_dir) / cfg.data.dataset


def run_dir(cfg: Config, given: str | None) -> Path:
    """<train.runs_dir>/<dataset>/<method>/seed<train.seed>: one folder per run of the study."""
    if given:
        return Path(given)
    return Path(cfg.train.runs_dir) / cfg.data.dataset / cfg.method.name / f"seed{cfg.train.seed}"


def study_runs(cfg: Config, methods: list[str]) -> list[Path]:
    """The runs of the study (methods x study.seeds), in that order."""
    base = Path(cfg.train.runs_dir) / cfg.data.dataset
    return [base / m / f"seed{k}" for m in methods for k in cfg.study.seeds]


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """--method and --seed as the parameters they stand for."""
    extra = [f"method.name={args.method}"] if getattr(args, "method", None) else []
    return extra + ([f"train.seed={args.seed}"] if getattr(args, "seed", None) is not None else [])


def cmd_prepare(args: argparse.Namespace) -> int:
    extra = [f"data.dataset={args.dataset}"] if args.dataset else []
    if args.raw_dir:
        extra.append(f"data.raw_dir={args.raw_dir}")
    if args.download:
        extra.append("data.download=true")
    cfg = _config(args, extra)
    storage_preflight(cfg)
    out = data_dir(cfg, args.out)
    d = cfg.data
    start = time.perf_counter()
    check_writable(out.parent)
    manifest = stages.prepare(cfg, out)
    mirror(cfg, out)
    splits = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    print(
        f"prepared {d.dataset} -> {out}: {manifest['num_classes']} classes, {splits} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def storage_preflight(cfg: Config) -> None:
    """Wrong credentials or a missing bucket stop a stage before its work, in one line."""
    if cfg.storage.artifacts_url:
        from excon.storage import check_access

        check_access(cfg.storage.artifacts_url)


def mirror(cfg: Config, *paths: Path) -> None:
    """Upload what a stage wrote to storage.artifacts_url/<path> (unchanged files skipped)."""
    if not cfg.storage.artifacts_url:
        return
    from excon.storage import upload_dir, upload_file

    base = cfg.storage.artifacts_url.rstrip("/")
    for path in paths:
        rel = Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
        if Path(path).is_dir():
            done = upload_dir(path, f"{base}/{rel}")
            print(
                f"[storage] {rel} -> {base}/{rel}: {done.transferred} uploaded, "
                f"{done.skipped} unchanged",
                file=sys.stderr,
            )
        elif Path(path).is_file():
            upload_file(path, f"{base}/{rel}")


@contextlib.contextmanager
def claim(directory: Path, what: str, take: bool = True) -> Iterator[None]:
    """Own an output directory for one stage: refuse an unwritable one before any work, lock it
    against a second writer, and remove what an interrupted write of the last run left there.
    `take=False` (the other ranks under torchrun) does nothing: rank 0 holds it for the job."""
    if not take:
        yield
        return
    check_writable(directory)
    with dir_lock(directory, what):
        for sub in (directory, *(p for p in directory.iterdir() if p.is_dir())):
            clean_leftovers(sub)
        yield


def cmd_pretrain(args: argparse.Namespace) -> int:
    from excon import distributed
    from excon.tracking import preflight
    from excon.train import resolve_device

    cfg = _config(args, _run_overrides(args))
    if distributed.launched().is_main:  # only rank 0 tracks (concurrent set_experiment races)
        preflight(cfg)
    storage_preflight(cfg)
    out = run_dir(cfg, args.run_dir)
    # Under torchrun every rank runs this command: join the job first, so that only rank 0
    # removes a run (--fresh), uploads it and reports, and the others wait for it.
    job, _ = distributed.setup(resolve_device(cfg.train.device))
    try:
        with claim(out, f"excon pretrain --method {cfg.method.name}", take=job.is_main):
            return _pretrain(args, cfg, out, job)
    finally:
        distributed.teardown()


def _pretrain(args: argparse.Namespace, cfg: Config, out: Path, job: Any) -> int:
    from excon import distributed

    check_free_space(out, pretrain_bytes(cfg))
    if args.fresh and job.is_main:
        _remove_run(out)
        if args.checkpoint_url:  # else a later run would restore the discarded one
            from excon.storage import delete_file

            delete_file(f"{args.checkpoint_url.rstrip('/')}/checkpoint.pt")
    # One download per node; the remote copy wins over a local one, so that the pods of a
    # multi-node job all start from rank 0's last upload (the ranks must agree).
    restore = args.checkpoint_url and not args.fresh and job.local_rank == 0
    if restore and stages.restore_checkpoint(args.checkpoint_url, out):
        print(f"restored {args.checkpoint_url}/checkpoint.pt", file=sys.stderr)
    distributed.barrier()
    resume = "auto" if args.resume_compatible else args.resume

    def upload(_row: dict) -> None:  # on rank 0, once its checkpoint of the epoch is written
        stages.save_checkpoint(args.checkpoint_url, out)

    on_epoch = upload if args.checkpoint_url else None
    summary = stages.pretrain(cfg, data_dir(cfg, args.data), out, resume, on_epoch)
    if job.is_main:
        mirror(cfg, out)
        split = "test" if cfg.study.protocol == "reference" else "val"  # scored every epoch
        print(f"trained {cfg.method.name} -> {out}: {split}/top1 {summary[f'{split}/top1']:.4f}")
    return 0


def pretrain_bytes(cfg: Config) -> int:
    """About what a run writes at once: the checkpoint (weights, SGD momentum, the previous
    checkpoint until the rename), the final model and figures. ResNet-18 at width 1: 11 M
    parameters; ResNet-50: 24 M (+ the 2048-d projector); both scale with width squared."""
    params = {"resnet18": 11.3e6, "resnet50": 27.5e6}[cfg.model.arch] * cfg.model.width**2
    return int(params * 4 * 5 + 20 * 2**20)


def _remove_run(path: Path) -> None:
    """Empty a run directory, keeping the lock the caller holds on it."""
    if (path / "checkpoint.pt").exists() or (path / "model.json").exists():
        print(f"--fresh: removing the previous run in {path}", file=sys.stderr)
        for child in path.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def cmd_probe(args: argparse.Namespace) -> int:
    from excon.tracking import preflight

    cfg = _config(args, _run_overrides(args))
    preflight(cfg)
    storage_preflight(cfg)
    out = run_dir(cfg, args.run_dir)
    if args.out:
        check_writable(Path(args.out).parent)
    with claim(out, f"excon probe --method {cfg.method.name}"):
        metrics = stages.probe(
            cfg, data_dir(cfg, args.data), out, Path(args.out) if args.out else None
        )
    mirror(
        cfg, out / "probe_head.safetensors", Path(args.out) if args.out else out / "metrics.json"
    )
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from excon.tracking import preflight

    cfg = _config(args, _run_overrides(args))
    preflight(cfg)
    storage_preflight(cfg)
    out = run_dir(cfg, args.run_dir)
    with contextlib.ExitStack() as held:  # one lock per part: parts may run side by side
        for part in args.part or PARTS:
            held.enter_context(claim(out / "eval" / part, f"excon evaluate --part {part}"))
        metrics = stages.evaluate(cfg, data_dir(cfg, args.data), out, args.part)
    mirror(cfg, *(out / "eval" / part for part in args.part or PARTS))
    print(f"evaluated {out}: {len(metrics)} metrics -> {out / 'eval'}/<part>/metrics.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from excon.evaluate.report import markdown_table
    from excon.tracking import preflight

    cfg = _config(args)
    preflight(cfg)
    storage_preflight(cfg)
    if args.runs:
        runs = [Path(r) for r in args.runs]
    else:  # the study's runs; without --methods, every method that has one
        runs = study_runs(cfg, args.methods or list(METHODS))
        runs = [r for r in runs if (r / "eval").is_dir()] if not args.methods else runs
    if not runs:
        raise FileNotFoundError("no evaluated runs given or found; pass --runs DIR...")
    out = Path(args.out) if args.out else Path(cfg.train.runs_dir) / cfg.data.dataset / "report"
    summary = stages.report(cfg, runs, out)
    mirror(cfg, out)
    print(markdown_table(summary))
    print(f"\nreport -> {out / 'report.md'} (+ report.json, plots)")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    if args.methods:  # every run of the study, one after another (each gate sees the last)
        cfg = _config(args)
        results = []
        for method, run in zip(
            [m for m in args.methods for _ in cfg.study.seeds],
            study_runs(cfg, args.methods),
            strict=True,
        ):
            mcfg = _config(args, [f"method.name={method}"])
            result = stages.register(mcfg, run, data_dir(cfg, args.data), record=None)
            _print_registered(result, run)
            results.append({"run": run.as_posix(), **result})
        from excon import artifacts

        artifacts.write_json(
            Path(cfg.train.runs_dir) / cfg.data.dataset / "registered.json", results
        )
        return 0
    cfg = _config(args, _run_overrides(args))
    out = run_dir(cfg, args.run_dir)
    _print_registered(stages.register(cfg, out, data_dir(cfg, args.data)), out)
    return 0


def _print_registered(result: dict, run: Path) -> None:
    if result["version"] is None:  # a DVC experiment: nothing registered
        print(f"{run}: {result['decision']}")
        return
    print(f"{run}: {result['name']} version {result['version']}: {result['decision']}")
    for line in result["reasons"]:
        print(f"  {line}")


def cmd_promote(args: argparse.Namespace) -> int:
    from excon.registry import promote

    cfg = _config(args)
    promote(cfg, args.name, args.version)
    print(f"{args.name} version {args.version} is now @champion")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from excon.serve.model import explain_files, print_results
    from excon.tracking import tracking_uri

    cfg = _config(args)
    results = explain_files(args.model, args.images, Path(args.out), tracking_uri=tracking_uri(cfg))
    print_results(results)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Blocks until SIGTERM/SIGINT; the tracking store is the configured one (or
    $MLFLOW_TRACKING_URI), which `models:/` URIs resolve against."""
    from excon.serve.images import Limits
    from excon.serve.server import serve
    from excon.tracking import configure

    cfg = _config(args)
    configure(cfg)
    serve(args.model, args.port, args.name, args.device, Limits(max_batch=args.max_batch))
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'method':<8} {'seed':>4} {'val/top1':>9} {'test/top1':>10} {'test/top5':>10} "
        f"{'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['method']:<8} {r.get('seed', ''):>4} {r.get('val/top1', float('nan')):>9.4f} "
            f"{r['test/top1']:>10.4f} {r['test/top5']:>10.4f} {r['train_seconds']:>8.0f}"
        )
    return "\n".join(lines)


def cmd_study(args: argparse.Namespace) -> int:
    """prepare (if needed) -> pretrain, probe, evaluate each method -> report.

    Runs already in place are resumed (a finished one is reused as it is), so a second
    `make run` only re-probes; --fresh starts every method over.
    """
    from excon import artifacts
    from excon.evaluate.report import markdown_table
    from excon.tracking import preflight

    cfg = _config(args)
    preflight(cfg)
    data = data_dir(cfg, None)
    if not (data / "manifest.json").is_file():
        cmd_prepare(
            argparse.Namespace(
                **{**vars(args), "dataset": None, "raw_dir": None, "download": False, "out": None}
            )
        )
    rows, runs = [], []
    for method, seed in [(m, k) for m in args.methods for k in cfg.study.seeds]:
        mcfg = _config(args, [f"method.name={method}", f"train.seed={seed}"])
        out = run_dir(mcfg, None)
        with claim(out, f"excon study ({method}, seed {seed})"):
            if args.fresh:
                _remove_run(out)
            summary = stages.pretrain(mcfg, data, out, resume=True)
            metrics = stages.probe(mcfg, data, out)
            if not args.skip_evaluate:
                stages.evaluate(mcfg, data, out)
        rows.append(
            {"method": method, "seed": seed, "train_seconds": summary["train_seconds"], **metrics}
        )
        runs.append(out)
    print(format_table(rows))
    base = Path(cfg.train.runs_dir) / cfg.data.dataset
    artifacts.write_json(base / "study.json", rows)
    if not args.skip_evaluate:
        summary_table = stages.report(cfg, runs, base / "report")
        print("\n" + markdown_table(summary_table))
        print(f"\nreport -> {base / 'report' / 'report.md'}")
    return 0


def _add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seed", type=int, help="overrides train.seed: which run of the study (seed<k>/)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="excon",
        description="Explanation-driven supervised contrastive learning: the study's stages.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _add_common(p)
        p.set_defaults(fn=fn)
        return p

    p = stage("prepare", cmd_prepare, "read a dataset's original files into the prepared format")
    p.add_argument("--dataset", choices=DATASETS, help="overrides data.dataset")
    p.add_argument("--raw-dir", help="directory holding the original files (no download)")
    p.add_argument("--download", action="store_true", help="download the original files first")
    p.add_argument("--out", help="output directory (default: <data.prepared_dir>/<dataset>)")

    p = stage("pretrain", cmd_pretrain, "pre-train an encoder with one method")
    p.add_argument("--method", choices=METHODS, help="overrides method.name")
    _add_seed(p)
    p.add_argument("--data", help="prepared dataset directory")
    p.add_argument(
        "--run-dir", help="output directory (default: <train.runs_dir>/<dataset>/<method>)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint.pt")
    p.add_argument("--fresh", action="store_true", help="delete an existing run and start over")
    p.add_argument(
        "--resume-compatible",
        action="store_true",
        help="resume when the checkpoint has the same training parameters, else start over "
        "(what dvc.yaml runs)",
    )
    p.add_argument(
        "--checkpoint-url",
        help="s3://bucket/prefix: upload checkpoint.pt there after every epoch, and start by "
        "fetching it when present, so that with --resume or --resume-compatible a preempted pod "
        "or a multi-node job resumes from it (--fresh deletes it)",
    )

    p = stage("probe", cmd_probe, "linear probe on the frozen encoder; writes metrics.json")
    p.add_argument("--method", choices=METHODS, help="overrides method.name")
    _add_seed(p)
    p.add_argument("--data", help="prepared dataset directory")
    p.add_argument("--run-dir", help="pre-training run directory")
    p.add_argument("--out", help="metrics file (default: <run-dir>/metrics.json)")

    p = stage(
        "evaluate", cmd_evaluate, "accuracy, calibration under shift, robustness, explanations"
    )
    p.add_argument("--method", choices=METHODS, help="overrides method.name")
    _add_seed(p)
    p.add_argument("--data", help="prepared dataset directory")
    p.add_argument("--run-dir", help="run directory (pretrained and probed)")
    p.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable; default: all): each writes <run-dir>/eval/<part>/",
    )

    p = stage("report", cmd_report, "compare evaluated runs: markdown/JSON table and plots")
    p.add_argument(
        "--runs",
        nargs="*",
        default=[],
        help="run directories (default: the study's evaluated runs)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="report exactly these methods' runs, every seed of study.seeds (all must exist)",
    )
    p.add_argument("--out", help="output directory (default: <runs_dir>/<dataset>/report)")

    p = stage("register", cmd_register, "register a model version; the gate may make it champion")
    p.add_argument("--method", choices=METHODS, help="overrides method.name")
    _add_seed(p)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="register every run of these methods (x study.seeds) in order; the results go to "
        "<runs_dir>/<dataset>/registered.json",
    )
    p.add_argument("--data", help="prepared dataset directory")
    p.add_argument("--run-dir", help="run directory (evaluated)")

    p = stage("promote", cmd_promote, "make a registered model version the champion")
    p.add_argument("name", help="registered model name, e.g. excon-animals")
    p.add_argument("version", type=int)

    p = stage("explain", cmd_explain, "classify images with a registered model + Grad-CAM PNGs")
    p.add_argument("--model", required=True, help="e.g. models:/excon-animals@champion")
    p.add_argument("--out", default="explanations", help="folder for the overlay PNGs")
    p.add_argument("images", nargs="+", help="image files")

    p = stage("serve", cmd_serve, "serve a registered model over HTTP (KServe v1/v2 + Grad-CAM)")
    p.add_argument("--model", required=True, help="e.g. models:/excon-animals@champion")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--name", help="model name in the routes (default: the registered name)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    p.add_argument("--max-batch", type=int, default=32, help="images per request at most")

    p = stage("study", cmd_study, "prepare, pre-train, probe, evaluate methods; print the report")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--fresh", action="store_true", help="delete existing runs and start over")
    p.add_argument("--skip-evaluate", action="store_true", help="probe accuracy table only")
    return parser


DEBUG_ENV = "EXCON_DEBUG"


def _known_failures() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix (bad params, data, paths, disk, services, a diverged run):
    one line each. Anything else is a bug in excon and keeps its traceback."""
    from mlflow.exceptions import MlflowException

    from excon.data.errors import DataError
    from excon.guard import DivergenceError, UnusableModel
    from excon.storage import StorageError
    from excon.tracking import RegistryError, TrackingError
    from excon.train import ResumeError

    return (
        ConfigError,
        DataError,
        ResumeError,
        TrackingError,
        RegistryError,
        StorageError,
        DivergenceError,
        UnusableModel,
        MlflowException,
        OSError,  # FsError (no space, unwritable, locked), FileNotFoundError, PermissionError...
    )


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, FsError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"  # e.g. "[Errno 30] ..." -> "path: Read-only ..."
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())  # one line, whatever the library put in its message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get(DEBUG_ENV):  # the traceback of every failure, for a bug report
        return args.fn(args)
    try:
        return args.fn(args)
    except _known_failures() as e:
        print(f"excon {args.stage}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
