"""The TrainJob pod's own script (pipelines/trainjob.py SCRIPT, the trainer's args), run here as
a pod would run it, against a real S3 server: torchrun with two CPU processes (gloo) instead of
two GPUs, configured by the PET_* variables Kubeflow Trainer's torch plugin sets. It fetches the
staged inputs, trains, uploads its checkpoint every epoch and mirrors the
run; a restarted pod (a fresh scratch volume) resumes from the uploaded checkpoint."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from excon.config import load_config
from excon.storage import upload_dir, upload_file
from pipelines.trainjob import render

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pod(script: str, work: Path, stage: str, s3_env) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",  # the image's python, torchrun
        "HOME": str(work.parent),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "EXCON_STAGE_URL": stage,
        "EXCON_METHOD": "supcon",
        "EXCON_PIPELINE_RUN": "",
        # what Trainer's torch plugin sets from numNodes and numProcPerNode
        "PET_NNODES": "1",
        "PET_NODE_RANK": "0",
        "PET_NPROC_PER_NODE": "2",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
        **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
    }
    work.parent.mkdir(parents=True)  # the pod's /tmp volume; the script makes work/ in it
    return subprocess.run(
        ["sh", "-ec", script.replace("/tmp/work", str(work))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=work.parent,
    )


OVERRIDES = [
    "model.width=0.0625",
    "model.proj_dim=8",
    "train.epochs=2",
    "train.batch_size=16",
    "train.device=cpu",
    "tracking.enabled=false",
]


def stage_inputs(stage: str, prepared: Path, tmp: Path) -> None:
    """What the launcher stages before creating the job."""
    upload_dir(prepared, f"{stage}/data")
    (tmp / "params").mkdir(parents=True)
    cfg = load_config(None, OVERRIDES)
    (tmp / "params" / "params.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    upload_dir(tmp / "params", f"{stage}/params")


def pod_script() -> str:
    trainer = render("registry.test/excon:1", 1, 2)["spec"]["trainer"]
    assert trainer["command"] == ["sh", "-ec"]  # no workingDir: made by the script, as the user
    (script,) = trainer["args"]
    return script


def test_pod_script_trains_uploads_and_a_restarted_pod_resumes(s3_env, bucket, prepared, tmp_path):
    script = pod_script()
    whole = f"s3://{bucket}/stage/run-1/supcon"
    stage_inputs(whole, prepared, tmp_path / "whole-inputs")
    first = run_pod(script, tmp_path / "pod1" / "work", whole, s3_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained supcon") == 1  # rank 0 alone reports
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "stage/run-1/supcon/checkpoint/checkpoint.pt" in keys  # uploaded every epoch
    assert "stage/run-1/supcon/run/summary.json" in keys  # the mirror the launcher fetches

    # The same job killed after epoch 1 (two processes, as in the pod), its checkpoint uploaded
    # as rank 0 does: a pod restarted on an empty volume resumes from it and ends with the
    # weights of the uninterrupted run.
    cut = f"s3://{bucket}/stage/run-2/supcon"
    stage_inputs(cut, prepared, tmp_path / "cut-inputs")
    killed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(ROOT / "tests/distributed/pretrain_until.py"), str(prepared),
         str(tmp_path / "killed"), "1", "fresh", *OVERRIDES],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "simulated kill after epoch 1" in killed.stderr, killed.stderr[-3000:]
    upload_file(tmp_path / "killed" / "checkpoint.pt", f"{cut}/checkpoint/checkpoint.pt")
    second = run_pod(script, tmp_path / "pod2" / "work", cut, s3_env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restored" in second.stderr and "resuming" in second.stderr
    assert "after epoch 1" in second.stderr
    a = load_file(tmp_path / "pod1" / "work" / "run" / "model.safetensors")
    b = load_file(tmp_path / "pod2" / "work" / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
