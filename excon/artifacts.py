"""Atomic artifact writing and safe model loading (safetensors, never unpickling)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from excon.fs import no_space_as_error
from excon.guard import finite_or_none, refuse_nonfinite
from excon.models import ExConNet

# mkstemp creates 0600 files; artifacts get the permissions the user's umask gives any new file
# (a sidecar in another UID, or a shared runs dir, must be able to read models). Read once.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file exists but cannot be loaded (truncated, corrupt, not ours)."""


MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it over `path` only if the block succeeds, so a
    reader never sees a half-written file and a crash leaves the previous version intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with no_space_as_error(path):
            yield Path(tmp)
            _fsync(tmp)  # the bytes reach the disk before the name: no empty file after a crash
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (RFC 8259): NaN and infinities are written as null, "undefined"."""
    text = json.dumps(finite_or_none(obj), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """One strict JSON object per line (NaN and infinities as null)."""
    lines = [json.dumps(finite_or_none(r), allow_nan=False) + "\n" for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with the union of their keys (first-seen order); a missing or non-finite
    value is an empty cell. What `dvc plots` reads (it reads no JSON Lines)."""
    import csv
    import io

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in finite_or_none(r).items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors, numbers and strings only; nothing executes.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnreadableCheckpoint(f"{path} is unreadable ({e}); pass --fresh to start over") from e


def save_model(run_dir: str | Path, model: ExConNet, meta: dict[str, Any]) -> None:
    """Final weights as safetensors + the metadata needed to rebuild the network."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / MODEL_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(run_dir / MODEL_META, meta)


def model_meta(model_cfg: Any, num_classes: int, in_channels: int, data_meta: dict) -> dict:
    return {
        "arch": model_cfg.arch,
        "width": model_cfg.width,
        "proj_dim": model_cfg.proj_dim,
        "num_classes": num_classes,
        "in_channels": in_channels,
        **data_meta,
    }


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ExConNet, dict]:
    """Rebuild a trained network from `model.json` + `model.safetensors`."""
    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / MODEL_META, run_dir / MODEL_WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; run `excon pretrain` for this run first")
    meta = json.loads(meta_path.read_text())
    model = build_network(meta)
    state = load_file(str(weights_path), device="cpu")
    refuse_nonfinite(state, str(weights_path))  # a diverged run is never probed or evaluated
    model.load_state_dict(state)
    return model.to(device), meta


def build_network(meta: dict) -> ExConNet:
    """An untrained network with the architecture `model.json` describes."""
    return ExConNet(
        num_classes=meta["num_classes"],
        arch=meta["arch"],
        width=meta["width"],
        in_channels=meta["in_channels"],
        proj_dim=meta["proj_dim"],
    )
