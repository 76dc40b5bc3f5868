"""DDP on CPU (gloo) through torchrun: two processes with B images each compute the loss and
gradients one process computes on 2B (the contrast spans the global batch), and a two-process
run that is killed resumes to the weights of an uninterrupted one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
# Whole pipelines in subprocesses: slower than the suite default when the workers share 2 cores.
pytestmark = pytest.mark.timeout(900)

ROOT = HERE.parents[1]


def env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXCON_"))}
    # the repo first on the path (the scripts import excon); one thread per process on 2 cores
    return {**keep, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        *args,
    ]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", ["supcon", "excon"])
def test_two_ranks_equal_one_process_on_the_global_batch(method, tmp_path):
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    out = subprocess.run(
        [sys.executable, str(HERE / "ddp_step.py"), method, str(single)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    torchrun(2, str(HERE / "ddp_step.py"), method, str(double))
    a, b = torch.load(single, weights_only=True), torch.load(double, weights_only=True)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-5), (a["loss"], b["loss"])
    assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) > 10
    for name, grad in a["grads"].items():
        assert torch.allclose(grad, b["grads"][name], atol=1e-5), name
    if method == "excon":  # background negatives crossed the ranks too
        assert a["backgrounds"] > 0 and float(a["backgrounds"]) == float(b["backgrounds"])


def test_gather_cannot_hide_a_local_only_loss(tmp_path):
    """The comparison can fail: without the gather (each rank contrasting its own shard) the
    two-process loss differs from the single process's."""
    script = tmp_path / "local_only.py"
    script.write_text(
        "import excon.methods as m\n"
        "m.gather_with_grad = lambda x: x\n"
        "import runpy\n"
        f"runpy.run_path({str(HERE / 'ddp_step.py')!r}, run_name='__main__')\n"
    )
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    subprocess.run(
        [sys.executable, str(HERE / "ddp_step.py"), "supcon", str(single)],
        env=env(),
        check=True,
        capture_output=True,
        timeout=300,
        cwd=ROOT,
    )
    torchrun(2, str(script), "supcon", str(double))
    a, b = torch.load(single, weights_only=True), torch.load(double, weights_only=True)
    assert not torch.allclose(a["loss"], b["loss"], atol=1e-5)


def test_two_process_run_is_killed_and_resumes(prepared, tmp_path):
    sets = [
        "method.name=supcon",
        "model.width=0.0625",
        "model.proj_dim=8",
        "train.epochs=2",
        "train.batch_size=16",
        "train.device=cpu",
        "optim.lr=0.05",
        "tracking.enabled=false",
    ]
    script = str(HERE / "pretrain_until.py")
    torchrun(2, script, str(prepared), str(tmp_path / "whole"), "0", "fresh", *sets)
    killed = torchrun(
        2, script, str(prepared), str(tmp_path / "cut"), "1", "fresh", *sets, check=False
    )
    assert killed.returncode != 0 and "simulated kill after epoch 1" in killed.stderr
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = torchrun(2, script, str(prepared), str(tmp_path / "cut"), "0", "resume", *sets)
    assert "resuming" in resumed.stderr
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "model.safetensors")
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_excon_pretrain_cli_under_torchrun(prepared, tmp_path):
    """`excon pretrain` runs unchanged under torchrun (as in a TrainJob's pods): one run directory,
    written by rank 0, with the global batch split over the ranks; --fresh is safe."""
    run = tmp_path / "run"
    sets = [
        "model.width=0.0625",
        "model.proj_dim=8",
        "train.epochs=1",
        "train.batch_size=16",
        "train.device=cpu",
        "tracking.enabled=false",
        "method.exp_epochs=1",
    ]
    args = [
        "-m",
        "excon.cli",
        "pretrain",
        "--method",
        "excon",
        "--data",
        str(prepared),
        "--run-dir",
        str(run),
        *(a for s in sets for a in ("--set", s)),
    ]
    first = torchrun(2, *args)
    assert first.stdout.count("trained excon") == 1  # rank 0 alone reports
    again = torchrun(2, *args, "--fresh")  # removing the old run must not race the other rank
    assert "removing the previous run" in again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["val/top1"] <= 1
    assert 0 <= summary["train/accept_rate"] <= 1  # averaged over the ranks


def test_ranks_that_would_resume_from_different_epochs_stop_with_a_clear_error(tmp_path):
    """Each pod of a multi-node job has its own run directory: if one saw another checkpoint
    than rank 0, it would pair the wrong collectives; every rank must refuse instead."""
    script = tmp_path / "disagree.py"
    script.write_text(
        "import torch\n"
        "from excon import distributed\n"
        "ctx, device = distributed.setup(torch.device('cpu'))\n"
        "distributed.check_same_on_all_ranks(ctx.rank * 3, 'the epoch to start from', device)\n"
    )
    out = torchrun(2, str(script), check=False)
    assert out.returncode != 0
    assert "ranks disagree on the epoch to start from: [0, 3]" in out.stderr
