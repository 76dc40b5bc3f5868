"""MLflow model registry: register an evaluated run behind a promotion gate, promote.

A registered version is an MLflow **pyfunc** model whose artifacts are the run's own files
(`model.safetensors`, `model.json`, `probe_head.safetensors`) and whose code is this package
(`code_paths`), so it loads anywhere the pinned requirements install, without unpickling
anything: the python model is logged as *code* (MLflow "models from code": a three-line
script that instantiates `ExConPyfunc`), not as a cloudpickle, and the weights are read with
safetensors.

Predict contract: excon.serve.model (the pyfunc, `excon explain` and `excon serve` share it): a
numpy **uint8** array `[N, H, W, C]` -> float32 class probabilities `[N, num_classes]`. A numpy
array rather than a DataFrame: images are tensors, and a tensor signature keeps the dtype/shape
check in MLflow's schema enforcement. Each version's description is its model card
(excon.model_card), also logged as the artifact `model_card.md` of its register run.

Promotion gate: every registered version gets alias `challenger` and its gate metrics as
version tags (`metric.<key>`). It becomes `champion` when, against the current champion,
    test/top1 >= champ - gate_top1_tolerance        calib/ece <= champ + gate_ece_tolerance
    adv/pgd/eps4/acc >= champ - gate_pgd_tolerance  expl/avg_drop <= champ + gate_avg_drop_tolerance
or when there is no champion yet. A metric the *challenger* lacks (or is NaN) fails its
criterion: it cannot be shown to be at least as good. A metric only the *champion* lacks is
skipped (nothing to compare against, like the no-champion case) and said so in the reasons.
The decision (`gate.decision` = promoted/rejected/manual) and one line per criterion with both
values (`gate.reasons`) are tagged on the version.

Like with like: each version is tagged with the sha256 of its weights, the DVC hash of the data
it was evaluated on and a digest of the evaluation settings (+ the settings as JSON). A champion
evaluated on other data or with other settings is not compared (`gate.decision` = not compared,
one reason naming what differs); the same weights are never registered twice; under a DVC
experiment nothing is registered unless `tracking.register_experiments`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from excon import tracking
from excon.artifacts import MODEL_META, MODEL_WEIGHTS
from excon.config import Config
from excon.serve.model import PROBE_HEAD, load_files
from excon.serve.model import ExConPyfunc as ExConPyfunc  # versions logged before excon.serve
from excon.tracking import RegistryError

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"
METRIC_TAG = "metric."
# Version tags: what the model is (its weights), what it was evaluated on and how, and where
# it came from. Two versions are compared only when data hash and eval settings agree.
WEIGHTS_TAG = "excon.weights_sha256"
DATA_TAG = "excon.data_hash"
SETTINGS_TAG = "excon.eval_settings"
SETTINGS_JSON_TAG = "excon.eval_settings_json"
TRAIN_RUN_TAG = "excon.train_run_id"
NOT_COMPARED = "not compared"
# eval keys that do not change what is measured: where corrupted sets are cached, how many
# images the Grad-CAM figure shows, and the batch size (eval-mode inference is per image; it
# only changes which PGD random start each image draws: the same distribution, not another
# test).
RESULT_NEUTRAL_EVAL_KEYS = ("batch_size", "shift_cache", "grid_images")
_ABSENT = object()

# (metric, direction, tolerance field): +1 higher is better, -1 lower is better
GATE = (
    ("test/top1", +1, "gate_top1_tolerance"),
    ("calib/ece", -1, "gate_ece_tolerance"),
    ("adv/pgd/eps4/acc", +1, "gate_pgd_tolerance"),
    ("expl/avg_drop", -1, "gate_avg_drop_tolerance"),
)

# The model is logged as code: this script is what pyfunc executes to get the python model.
_MODEL_CODE = (
    "import mlflow\n"
    "from excon.serve.model import ExConPyfunc\n"
    "mlflow.models.set_model(ExConPyfunc())\n"
)


# --------------------------------------------------------------------------------------------
# registering


def _requirements() -> list[str]:
    """Pinned requirements of the pyfunc. `excon` itself is not on any index: its code travels
    with the model (`code_paths`), so only its runtime dependencies are listed, pinned to the
    versions this model was built and tested with (the local `+cpu`/`+cu*` tag dropped)."""
    import importlib.metadata as md

    def pin(dist: str) -> str:
        return f"{dist}=={md.version(dist).split('+')[0]}"

    return [pin(d) for d in ("torch", "torchvision", "safetensors", "numpy")]


def model_name(cfg: Config, meta: dict) -> str:
    return cfg.tracking.model_name or f"excon-{meta.get('dataset') or cfg.data.dataset}"


def _signature(meta: dict) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    c, k = meta["in_channels"], meta["num_classes"]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, c))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, k))]),
    )


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def gate(cfg: Config, challenger: dict, champion: dict | None) -> tuple[bool, list[str]]:
    """The promotion decision and one reason line per criterion (both values shown). A
    challenger missing a gate metric, or holding a non-finite one, is never promoted."""
    undefined = [key for key, _, _ in GATE if _number(challenger.get(key)) is None]
    if undefined:
        return False, [f"FAIL {key}: challenger has no finite value" for key in undefined]
    if champion is None:
        return True, ["no champion yet: promoted"]
    ok, reasons = True, []
    for key, direction, tol_field in GATE:
        tol = float(getattr(cfg.tracking, tol_field))
        new, old = _number(challenger.get(key)), _number(champion.get(key))
        if new is None:
            ok = False
            reasons.append(f"FAIL {key}: challenger has no value (champion {old})")
            continue
        if old is None:
            reasons.append(f"skip {key}: champion has no value (challenger {new:.4f})")
            continue
        bound = old - tol if direction > 0 else old + tol
        passed = new >= bound if direction > 0 else new <= bound
        ok &= passed
        op = ">=" if direction > 0 else "<="
        reasons.append(
            f"{'pass' if passed else 'FAIL'} {key}: challenger {new:.4f} {op} "
            f"champion {old:.4f} {'-' if direction > 0 else '+'} tolerance {tol:g}"
        )
    return ok, reasons


def eval_settings(cfg: Config) -> dict[str, Any]:
    """The evaluation settings two versions must share for their metrics to be compared."""
    settings = dataclasses.asdict(cfg.eval)
    return {k: v for k, v in sorted(settings.items()) if k not in RESULT_NEUTRAL_EVAL_KEYS}


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def weights_sha256(run_dir: Path) -> str:
    """A model's identity: the sha256 of its encoder and probe head weight files."""
    return tracking.file_sha256(Path(run_dir) / MODEL_WEIGHTS, Path(run_dir) / PROBE_HEAD)


def like_with_like(challenger: dict[str, str], champion: Any) -> str | None:
    """None when the challenger's tags and the champion version say both were evaluated on the
    same data with the same settings, else one line naming what differs. A tag either side
    lacks (a version registered before these tags existed) is no difference."""
    theirs = champion.tags or {}
    differs = []
    new, old = challenger.get(DATA_TAG), theirs.get(DATA_TAG)
    if new and old and new != old:
        differs.append(f"on other data (data hash {old[:12]} vs {new[:12]})")
    new, old = challenger.get(SETTINGS_TAG), theirs.get(SETTINGS_TAG)
    if new and old and new != old:
        differs.append(f"with other settings ({_settings_diff(challenger, theirs)})")
    if not differs:
        return None
    return f"champion v{champion.version} was evaluated {' and '.join(differs)}"


def _settings_diff(challenger: dict[str, str], champion: dict[str, str]) -> str:
    """`key champion-value vs challenger-value, ...`, or the two digests when a JSON is lost."""
    try:
        new = json.loads(challenger[SETTINGS_JSON_TAG])
        old = json.loads(champion[SETTINGS_JSON_TAG])
    except (KeyError, ValueError):
        return f"{champion.get(SETTINGS_TAG)} vs {challenger.get(SETTINGS_TAG)}"
    keys = sorted(k for k in {*new, *old} if new.get(k, _ABSENT) != old.get(k, _ABSENT))
    return ", ".join(f"{k} {json.dumps(old.get(k))} vs {json.dumps(new.get(k))}" for k in keys)


def _version_metrics(version: Any) -> dict[str, float | None]:
    tags = version.tags or {}
    return {key: _number(tags.get(METRIC_TAG + key)) for key, _, _ in GATE}


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _checked_run(run_dir: Path) -> tuple[dict, dict]:
    """(model.json, eval metrics) of a complete, finite run; refused before anything is
    logged when a file is missing or a weight is not finite."""
    from excon.evaluate import PARTS
    from excon.evaluate.report import EVAL_DIR, EVAL_METRICS, load_eval_metrics

    files = [run_dir / f for f in (MODEL_WEIGHTS, MODEL_META, PROBE_HEAD)]
    evals = [run_dir / EVAL_DIR / part / EVAL_METRICS for part in PARTS]
    missing = [str(f) for f in [*files, *evals] if not f.is_file()]
    if missing:
        raise RegistryError(
            f"cannot register {run_dir}: missing {', '.join(missing)} "
            "(run pretrain, probe and evaluate first)"
        )
    load_files(run_dir)  # refuses a diverged run (non-finite weights)
    return json.loads((run_dir / MODEL_META).read_text()), load_eval_metrics(run_dir)


def skipped_decision(experiment: str) -> str:
    return (
        f"skipped: experiment {experiment}; "
        "pass -S tracking.register_experiments=true (dvc exp run) to register"
    )


def register(
    cfg: Config,
    run_dir: Path,
    data_dir: Path | None = None,
    source: str | None = None,
    report: Path | None = None,
) -> dict:
    """Log the run in `run_dir` as a pyfunc model, register a new version with alias
    `challenger`, and move `champion` to it when it passes the gate.

    Nothing is logged under a DVC experiment unless `tracking.register_experiments`, nor for
    weights already registered (that version is returned). `source` (default: run_dir) is
    where the run's files live, recorded as a tag; orchestrators pass their artifact URI.
    `report` (default: the study's <runs_dir>/<dataset>/report/report.json beside the run, when
    there) gives the model card its intervals. Returns {name, version, decision, reasons}."""
    run_dir = Path(run_dir)
    meta, metrics = _checked_run(run_dir)
    name = model_name(cfg, meta)
    experiment = tracking.dvc_experiment()
    if experiment and not cfg.tracking.register_experiments:
        return {
            "name": name,
            "version": None,
            "decision": skipped_decision(experiment),
            "reasons": [],
        }
    if not cfg.tracking.enabled:
        raise RegistryError(
            "registering a model needs MLflow tracking, which is off (tracking.enabled: false); "
            "turn it on or drop --set tracking.enabled=false"
        )
    tracking.preflight(cfg)
    client = tracking.configure(cfg).MlflowClient()
    digest = weights_sha256(run_dir)
    existing = _version_with_weights(client, name, digest)
    if existing is not None:
        then = (existing.tags or {}).get("gate.decision", "unknown")
        return {
            "name": name,
            "version": int(existing.version),
            "decision": f"already registered as version {existing.version}",
            "reasons": [f"same weights (sha256 {digest[:12]}); its gate decision: {then}"],
        }
    tags = _version_tags(cfg, meta, metrics, data_dir, source or str(run_dir), digest)
    number = _log_version(cfg, run_dir, meta, metrics, data_dir, name, tags)
    decision, reasons = _decide(cfg, client, name, number)
    report = report or run_dir.parent.parent / "report" / "report.json"
    _write_card(cfg, client, name, number, meta, metrics, (decision, reasons), report)
    return {"name": name, "version": number, "decision": decision, "reasons": reasons}


def _write_card(
    cfg: Config,
    client: Any,
    name: str,
    number: int,
    meta: dict,
    metrics: dict,
    decided: tuple[str, list[str]],
    report: Path,
) -> None:
    """The model card: the version's description and `model_card.md` of its register run."""
    from excon.model_card import model_card

    version = client.get_model_version(name, str(number))
    found = json.loads(report.read_text()) if report.is_file() else None
    card = model_card(name, number, meta, metrics, version.tags or {}, *decided, cfg, found)
    client.update_model_version(name, str(number), description=card)
    if version.run_id:
        client.log_text(version.run_id, card, "model_card.md")


def _version_tags(
    cfg: Config, meta: dict, metrics: dict, data_dir: Path | None, source: str, digest: str
) -> dict[str, str]:
    """What the version is (its weights), what it was evaluated on and how, and its metrics."""
    settings = eval_settings(cfg)
    data = tracking.data_hash(data_dir) if data_dir is not None else None
    return {
        "excon.run_dir": source,
        "excon.method": str(meta.get("method")),
        "excon.dataset": str(meta.get("dataset")),
        WEIGHTS_TAG: digest,
        SETTINGS_TAG: settings_digest(settings),
        SETTINGS_JSON_TAG: json.dumps(settings, sort_keys=True),
        **({DATA_TAG: data} if data else {}),
        **{
            METRIC_TAG + key: repr(float(metrics[key]))
            for key, _, _ in GATE
            if _number(metrics.get(key)) is not None
        },
    }


def _version_with_weights(client: Any, name: str, digest: str) -> Any | None:
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{WEIGHTS_TAG}` = '{digest}'", max_results=1
    )
    return found[0] if found else None


def _log_version(
    cfg: Config,
    run_dir: Path,
    meta: dict,
    metrics: dict,
    data_dir: Path | None,
    name: str,
    tags: dict[str, str],
) -> int:
    """Log the pyfunc model in a `register` run and register it as a new version of `name`,
    linked to that run; returns the version number."""
    mlflow = tracking.configure(cfg)
    with tracking.stage_run(cfg, "register", meta.get("method"), data_dir) as tracker:
        if tracker.run_id is None:
            raise RegistryError(f"could not start an MLflow run at {tracking.tracking_uri(cfg)}")
        tracker.log_metrics(metrics)
        train_run = _train_run_id(mlflow, run_dir)
        if train_run:
            tags = {**tags, TRAIN_RUN_TAG: train_run}
        with tempfile.TemporaryDirectory() as tmp:
            code = Path(tmp) / "excon_model.py"
            code.write_text(_MODEL_CODE)
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(code),
                artifacts={f: str(run_dir / f) for f in (MODEL_WEIGHTS, MODEL_META, PROBE_HEAD)},
                code_paths=[str(Path(__file__).parent)],
                pip_requirements=_requirements(),
                signature=_signature(meta),
                input_example=input_example(meta),
            )
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    return int(version.version)


def input_example(meta: dict) -> np.ndarray:
    """A tiny uint8 batch [2, 8, 8, C] (resized to the training size like any input): written
    as serving_input_example.json beside the model, and served once when it is logged."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 8, 8, meta["in_channels"]), dtype=np.uint8)


def _train_run_id(mlflow: Any, run_dir: Path) -> str | None:
    """The pretrain run that wrote this encoder (tagged with its sha256), if it is in the
    experiment; a lookup failure only loses the link."""
    digest = tracking.file_sha256(run_dir / MODEL_WEIGHTS)
    try:
        found = mlflow.search_runs(
            filter_string=f"tags.`{tracking.MODEL_SHA256_TAG}` = '{digest}' "
            "and tags.`excon.stage` = 'pretrain'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
    except Exception:
        return None
    return found[0].info.run_id if found else None


def _decide(cfg: Config, client: Any, name: str, number: int) -> tuple[str, list[str]]:
    """Alias the new version `challenger`, hold it against the champion (like with like, then
    the gate), tag the decision and move `champion` when it passed."""
    client.set_registered_model_alias(name, CHALLENGER, str(number))
    version = client.get_model_version(name, str(number))
    champ = _champion(client, name)
    mismatch = None if champ is None else like_with_like(version.tags or {}, champ)
    if mismatch:
        passed, decision, reasons = False, NOT_COMPARED, [mismatch]
    else:
        passed, reasons = gate(
            cfg, _version_metrics(version), None if champ is None else _version_metrics(champ)
        )
        if champ is not None:
            reasons.insert(0, f"champion: version {champ.version}")
        decision = "promoted" if passed else "rejected"
    client.set_model_version_tag(name, str(number), "gate.decision", decision)
    client.set_model_version_tag(name, str(number), "gate.reasons", "\n".join(reasons))
    if passed:
        client.set_registered_model_alias(name, CHAMPION, str(number))
    return decision, reasons


def promote(cfg: Config, name: str, version: int) -> None:
    """Manual promotion: alias `champion` -> `version`, tagged gate.decision=manual."""
    if not cfg.tracking.enabled:
        raise RegistryError("promoting a model needs MLflow tracking, which is off")
    tracking.preflight(cfg)
    client = tracking.configure(cfg).MlflowClient()
    client.get_model_version(name, str(version))  # a clear MLflow error when it does not exist
    client.set_model_version_tag(name, str(version), "gate.decision", "manual")
    client.set_registered_model_alias(name, CHAMPION, str(version))
