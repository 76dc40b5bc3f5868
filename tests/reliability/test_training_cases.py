"""The bad-input corpus, training and model side: each case through the real CLI, asserting the
exit code, the one line, and that nothing was left half-written (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from excon import fs, train
from excon.artifacts import MODEL_WEIGHTS, write_json, write_jsonl
from excon.cli import main
from excon.config import ConfigError, load_config
from excon.fs import dir_lock
from excon.guard import DivergenceError
from excon.testing import write_eval_parts
from tests.conftest import TINY

NO_TRACKING = "tracking.enabled=false"


def sets(*overrides: str) -> list[str]:
    return [a for s in (*TINY, "train.epochs=1", NO_TRACKING, *overrides) for a in ("--set", s)]


def one_line(capsys, stage: str) -> str:
    """The stage's stderr must be exactly one error line; returns it."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith(f"excon {stage}: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def no_leftovers(directory: Path) -> None:
    assert not [p.name for p in directory.rglob(".*.tmp")]
    assert not (directory / fs.LOCK_NAME).exists()


@pytest.fixture(scope="module")
def good_run(prepared, tmp_path_factory) -> Path:
    """One tiny pretrained and probed run, copied by the tests that damage it."""
    run = tmp_path_factory.mktemp("good") / "run"
    data = ["--data", str(prepared), "--run-dir", str(run)]
    assert main(["pretrain", "--method", "supcon", *data, *sets()]) == 0
    assert main(["probe", "--method", "supcon", *data, *sets()]) == 0
    return run


def poisoned_copy(good_run: Path, tmp_path: Path) -> Path:
    """The good run with NaN in one weight tensor: what a diverged run leaves."""
    run = tmp_path / "diverged"
    shutil.copytree(good_run, run)
    state = load_file(str(run / MODEL_WEIGHTS))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(run / MODEL_WEIGHTS))
    return run


# 1-2. divergence, and values a finite number is meant to be --------------------------------


@pytest.mark.parametrize("lr", [".inf", "inf", "nan", "-.inf"])
def test_a_non_finite_lr_is_refused_in_one_line(lr, capsys, tmp_path):
    assert main(["pretrain", "--run-dir", str(tmp_path / "r"), *sets(f"optim.lr={lr}")]) == 2
    line = one_line(capsys, "pretrain")
    assert "optim.lr: got" in line and ("finite" in line or "expected float" in line)
    assert not (tmp_path / "r").exists()


def test_a_diverging_lr_stops_the_run_with_no_model(prepared, capsys, tmp_path):
    run = tmp_path / "r"
    args = ["pretrain", "--method", "ce", "--data", str(prepared), "--run-dir", str(run)]
    assert main([*args, *sets("optim.lr=1e6", "optim.warmup_epochs=0")]) == 2
    line = one_line(capsys, "pretrain")
    assert "ce diverged" in line and "epoch 1" in line and "lr was" in line
    assert not (run / MODEL_WEIGHTS).exists() and not (run / "checkpoint.pt").exists()
    no_leftovers(run)


def test_divergence_keeps_the_last_good_checkpoint(prepared, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=2", "optim.warmup_epochs=0")
    real_lr = train.epoch_lr
    # the second epoch's lr explodes: epoch 1's checkpoint must survive, epoch 2 write nothing
    monkeypatch.setattr(
        train, "epoch_lr", lambda c, e, s, n: 1e8 if e == 1 else real_lr(c, e, s, n)
    )
    with pytest.raises(DivergenceError, match=r"epoch 2.*last good checkpoint is kept"):
        train.pretrain(cfg, prepared, tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "r" / MODEL_WEIGHTS).exists()
    # the metrics log holds epoch 1 only, as strict JSON
    log = (tmp_path / "r" / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in log.splitlines()]
    assert [r["epoch"] for r in rows] == [1]


def test_tolerated_non_finite_steps_skip_their_update(prepared, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=1", "train.nonfinite_tolerance=1", "method.name=ce")
    real_step = train.StepModule.forward
    calls = {"n": 0}

    def one_nan_step(self, views, labels, ctx):
        loss, stats = real_step(self, views, labels, ctx)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 1 else loss), stats

    monkeypatch.setattr(train.StepModule, "forward", one_nan_step)
    summary = train.pretrain(cfg, prepared, tmp_path / "r")
    assert summary["train/skipped_steps"] == 1.0
    weights = load_file(str(tmp_path / "r" / MODEL_WEIGHTS))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    # a second bad step in the epoch is one too many
    def every_step_nan(self, views, labels, ctx):
        loss, stats = real_step(self, views, labels, ctx)
        return loss * math.nan, stats

    monkeypatch.setattr(train.StepModule, "forward", every_step_nan)
    with pytest.raises(DivergenceError, match="2 non-finite steps in epoch 1"):
        train.pretrain(cfg, prepared, tmp_path / "r2")


@pytest.mark.parametrize("stage", ["probe", "evaluate"])
def test_a_diverged_model_is_refused_by_probe_and_evaluate(
    stage, good_run, prepared, capsys, tmp_path
):
    run = poisoned_copy(good_run, tmp_path)
    args = [stage, "--method", "supcon", "--data", str(prepared), "--run-dir", str(run)]
    assert main([*args, *sets()]) == 2
    assert "weight tensors are not finite" in one_line(capsys, stage)


def test_a_diverged_model_is_never_registered(good_run, prepared, capsys, tmp_path):
    run = poisoned_copy(good_run, tmp_path)
    write_eval_parts(run, {"method": "supcon", "test/top1": 0.9, "calib/ece": 0.1})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["register", "--method", "supcon", "--run-dir", str(run), "--data", str(prepared)]
    assert main([*args, "--set", f"tracking.uri={store}"]) == 2
    assert "weight tensors are not finite" in one_line(capsys, "register")
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow was touched


def test_metrics_files_are_strict_json(tmp_path):
    write_json(tmp_path / "m.json", {"ece": float("nan"), "nll": float("inf"), "top1": 0.5})
    write_jsonl(tmp_path / "m.jsonl", [{"loss": float("nan")}, {"loss": 1.0}])

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    assert strict((tmp_path / "m.json").read_text()) == {"ece": None, "nll": None, "top1": 0.5}
    rows = [strict(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == [{"loss": None}, {"loss": 1.0}]


# 3. numbers as YAML users write them ------------------------------------------------------


def test_scientific_notation_is_a_number_in_set_and_in_files(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("optim:\n  weight_decay: 5e-4\n  lr: 1E6\n  warmup_from: .5e-2\n")
    cfg = load_config(params, ["optim.momentum=9e-1", "probe.lrs=[1e-3, 2.5E-1]"])
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.lr == 1e6
    assert cfg.optim.warmup_from == 0.005 and cfg.optim.momentum == 0.9
    assert cfg.probe.lrs == [1e-3, 0.25]
    with pytest.raises(ConfigError, match=r"train\.epochs: got 'ten', expected int"):
        load_config(None, ["train.epochs=ten"])  # words stay words


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_an_unknown_device_is_one_line(device, capsys, tmp_path):
    assert (
        main(["pretrain", "--run-dir", str(tmp_path / "r"), *sets(f"train.device={device}")]) == 2
    )
    assert "train.device: got" in one_line(capsys, "pretrain")


def test_a_gpu_this_machine_lacks_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["pretrain", "--run-dir", str(tmp_path / "r"), *sets("train.device=cuda")]) == 2
    assert "CUDA is not available" in one_line(capsys, "pretrain")


# 4. one writer per run directory ---------------------------------------------------------


def test_a_second_writer_stops_at_once_naming_the_holder(prepared, capsys, tmp_path):
    run = tmp_path / "r"
    args = ["pretrain", "--data", str(prepared), "--run-dir", str(run), *sets()]
    with dir_lock(run, "another pretrain"):
        start = time.monotonic()
        assert main(args) == 2
        assert time.monotonic() - start < 5
    line = one_line(capsys, "pretrain")
    assert f"in use by PID {os.getpid()} on {socket.gethostname()}" in line
    assert not (run / "checkpoint.pt").exists()


def test_two_concurrent_pretrains_one_wins(prepared, tmp_path):
    """Two real processes on one run dir: one trains, the other stops in one line."""
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "excon.cli", "pretrain", "--data", str(prepared)]
    cmd += ["--run-dir", str(run), *sets("train.epochs=2")]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by PID" in loser
    assert (run / MODEL_WEIGHTS).exists()
    no_leftovers(run)


def test_a_stale_lock_is_taken_over(prepared, capsys, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "r"
    run.mkdir()
    (run / fs.LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "what": "killed"})
    )
    assert main(["pretrain", "--data", str(prepared), "--run-dir", str(run), *sets()]) == 0
    assert "taking over a stale lock" in capsys.readouterr().err
    no_leftovers(run)


# 5. one line instead of a traceback ------------------------------------------------------


def test_a_missing_registered_model_is_one_line(capsys, tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["explain", "--model", "models:/nosuch@champion", str(image)]
    assert main([*args, "--out", str(tmp_path / "o"), "--set", f"tracking.uri={store}"]) == 2
    assert "models:/nosuch@champion" in one_line(capsys, "explain")


def test_disk_full_before_training_is_one_line_with_the_size(
    prepared, capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(fs.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 9, 2**20))
    assert (
        main(["pretrain", "--data", str(prepared), "--run-dir", str(tmp_path / "r"), *sets()]) == 2
    )
    line = one_line(capsys, "pretrain")
    assert f"no space left on {tmp_path / 'r'} (needs about" in line and "1 MB free" in line


def test_disk_full_while_writing_a_checkpoint_is_one_line(prepared, capsys, tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
            "failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(train.artifacts.torch, "save", full)
    run = tmp_path / "r"
    assert main(["pretrain", "--data", str(prepared), "--run-dir", str(run), *sets()]) == 2
    assert f"no space left on {run / 'checkpoint.pt'}" in one_line(capsys, "pretrain")
    no_leftovers(run)


@pytest.mark.parametrize("stage", ["pretrain", "probe"])
def test_a_read_only_run_dir_is_refused_before_any_work(
    stage, good_run, prepared, capsys, tmp_path, monkeypatch
):
    run = tmp_path / "r"
    shutil.copytree(good_run, run)

    def read_only(*a, **k):  # root ignores file modes: simulate the read-only mount
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fs.tempfile, "mkstemp", read_only)
    start = time.monotonic()
    args = [stage, "--method", "supcon", "--data", str(prepared), "--run-dir", str(run)]
    assert main([*args, *sets(), *(["--fresh"] if stage == "pretrain" else [])]) == 2
    assert time.monotonic() - start < 10  # refused up front, not after the fitting
    assert f"{run} is not writable" in one_line(capsys, stage)
    assert (run / MODEL_WEIGHTS).exists()  # --fresh removed nothing


def test_an_unreachable_mlflow_fails_within_seconds(capsys, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    args = [
        "pretrain",
        "--run-dir",
        str(tmp_path / "r"),
        "--set",
        f"tracking.uri=http://127.0.0.1:{port}",
    ]
    assert main(args) == 2
    assert time.monotonic() - start < 10
    assert f"MLflow tracking store http://127.0.0.1:{port} is not usable" in one_line(
        capsys, "pretrain"
    )


def test_debug_env_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EXCON_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["pretrain", "--run-dir", str(tmp_path / "r"), *sets("train.device=tpu")])


# 8. leftovers and permissions ------------------------------------------------------------


def test_leftovers_of_a_killed_write_are_removed_at_the_next_start(prepared, capsys, tmp_path):
    run = tmp_path / "r"
    (run / "figures").mkdir(parents=True)
    for leftover in (run / ".checkpoint.pt.k1j2.tmp", run / "figures" / ".training.png.x.tmp"):
        leftover.write_bytes(b"")
    assert main(["pretrain", "--data", str(prepared), "--run-dir", str(run), *sets()]) == 0
    assert "leftover(s) of a killed write" in capsys.readouterr().err
    no_leftovers(run)


def test_artifacts_follow_the_umask(good_run):
    # the good run was written under the test process's umask (022 unless the machine differs)
    umask = os.umask(0)
    os.umask(umask)
    for name in (MODEL_WEIGHTS, "model.json", "metrics.json", "checkpoint.pt"):
        assert (good_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# already held before this issue: kept here so they stay held ---------------------------------


def test_a_hostile_pickle_in_a_checkpoint_is_refused(prepared, capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"epoch": 1, "x": Boom()}, run / "checkpoint.pt")
    assert (
        main(["pretrain", "--data", str(prepared), "--run-dir", str(run), "--resume", *sets()]) == 2
    )
    assert "unreadable" in one_line(capsys, "pretrain")
    assert not (tmp_path / "pwned").exists()


def test_a_corrupt_npy_in_the_prepared_data_is_one_line(prepared, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    blob = bytearray((data / "train_images.npy").read_bytes())
    blob[-10:] = b"\xff" * 10  # flipped bytes: the manifest's sha256 no longer matches
    (data / "train_images.npy").write_bytes(bytes(blob))
    assert main(["pretrain", "--data", str(data), "--run-dir", str(tmp_path / "r"), *sets()]) == 2
    assert "train_images.npy" in one_line(capsys, "pretrain")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_kill_9_then_resume_gives_the_uninterrupted_weights(prepared, tmp_path):
    """A real SIGKILL after the first epoch's checkpoint, then --resume: bitwise the weights
    of a run never interrupted (each run in its own process, as a user would)."""
    base = [sys.executable, "-m", "excon.cli", "pretrain", "--data", str(prepared)]
    args = sets("train.epochs=2")
    subprocess.run([*base, "--run-dir", str(tmp_path / "full"), *args], check=True)
    victim = subprocess.Popen([*base, "--run-dir", str(tmp_path / "cut"), *args])
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill()
    victim.wait()
    assert torch.load(ckpt, weights_only=True)["epoch"] < 2, "killed too late to test resume"
    cmd = [*base, "--run-dir", str(tmp_path / "cut"), "--resume", *args]
    subprocess.run(cmd, check=True)  # the stale lock is taken over, leftovers removed
    full = load_file(str(tmp_path / "full" / MODEL_WEIGHTS))
    resumed = load_file(str(tmp_path / "cut" / MODEL_WEIGHTS))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    no_leftovers(tmp_path / "cut")
