"""What each stage of the study reads: the same table dvc.yaml spells out (a test holds the two
equal), used to hand every KFP task exactly its slice of the parameters (what a KFP backend's
own fingerprint hashes) and to give it a cache key for backends that honour compiled keys.

A task's key hashes its stage, its method and seed, the parameters it reads, the code it runs
(its stage's excon files, pipelines.stage_code.code_version, and the components' and pipelines'
source), the image and its upstream tasks' keys (a Merkle chain, as DVC's lock file is), so
changing method.tau re-runs excon's chain and reuses ce's and supcon's cached results, while
rebuilding the image under the same tag with new code cannot hand back stale artifacts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

METHODS = ("ce", "supcon", "excon")
PARTS = ("calibration", "robustness", "explanations")

# stage -> the params keys it reads ("section" = the whole section), as in dvc.yaml.
STAGE_PARAMS: dict[str, list[str]] = {
    "prepare": [
        "data.dataset",
        "data.raw_dir",
        "data.download",
        "data.image_size",
        "data.val_fraction",
        "data.test_fraction",
        "data.limit_per_class",
        "data.seed",
    ],
    "pretrain": [
        "model",
        "optim",
        "train.epochs",
        "train.batch_size",
        "train.amp",
        "train.channels_last",
        "train.max_steps_per_epoch",
        "train.sync_bn",
        "train.augment",
        "train.classifier_augment",
        "train.nonfinite_tolerance",
        "train.bn",
        # which split is scored every epoch and recorded in model.json (probe, evaluate read it)
        "study.protocol",
    ],
    # train.seed is no parameter of a run's stages: the seed axis (study.seeds) passes it
    "probe": ["probe"],
    "evaluate_calibration": [
        "eval.batch_size",
        "eval.seed",
        "eval.head",
        "eval.n_bins",
        "eval.corruptions",
        "eval.extra_corruptions",
        "eval.severities",
        "eval.shift_images",
        "eval.cifar100c_dir",
    ],
    "evaluate_robustness": [
        "eval.batch_size",
        "eval.seed",
        "eval.head",
        "eval.n_bins",
        "eval.eps",
        "eval.pgd_steps",
        "eval.attack_images",
    ],
    "evaluate_explanations": [
        "eval.batch_size",
        "eval.seed",
        "eval.head",
        "eval.expl_images",
        "eval.top_frac",
        "eval.deletion_steps",
        "eval.grid_images",
    ],
    "report": ["study.seeds"],
    # eval: the gate compares only versions evaluated with the same settings (a version tag)
    "register": ["tracking", "study.seeds", "eval"],
}
# pretrain's method-specific keys (ce reads no method.* key).
METHOD_PARAMS: dict[str, list[str]] = {
    "ce": [],
    "supcon": ["method.temperature", "method.base_temperature", "method.head_training"],
    "excon": ["method"],
}


def stage_params(stage: str, method: str | None = None) -> list[str]:
    keys = list(STAGE_PARAMS[stage])
    if stage == "pretrain" and method is not None:
        keys += [k for k in METHOD_PARAMS[method] if k not in keys]
    return keys


def params_slice(config: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The values of `keys` ("section" or "section.key") in a config dict."""
    out: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        out[key] = config[section] if not name else config[section][name]
    return out


def code_roots() -> list[Path]:
    """The Python source every task runs: the excon package, the components (their bodies are
    the tasks' code) and these pipeline modules."""
    import components
    import excon

    return [
        Path(excon.__file__).resolve().parent,
        Path(components.__file__).resolve().parent,
        Path(__file__).resolve().parent,
    ]


def code_digest(roots: list[Path] | None = None) -> str:
    """sha256 of every .py file under `roots` (default: code_roots())."""
    roots = code_roots() if roots is None else roots
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = f"{root.name}/{path.relative_to(root).as_posix()}"
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(
    stage: str,
    method: str | None,
    config: dict[str, Any],
    code: str,
    image: str,
    upstream: list[str],
    seed: int | None = None,
) -> str:
    payload = {
        "stage": stage,
        "method": method,
        "seed": seed,  # the run's train.seed: no stage's parameter slice holds it
        "params": params_slice(config, stage_params(stage, method)),
        "code": code,
        "image": image,
        "upstream": sorted(upstream),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return f"{stage}-{method or 'all'}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"
