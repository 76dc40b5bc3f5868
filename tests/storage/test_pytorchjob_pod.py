"""The PyTorchJob pod's own script (infra/k8s/training/pytorchjob.yaml), run here as a pod
would run it, against a real S3 server: torchrun with two CPU processes (gloo) instead of two
GPUs. It fetches the staged inputs, trains, uploads its checkpoint every epoch and mirrors the
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
from excon.storage import upload_dir
from pipelines.pytorchjob import render

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
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PET_NPROC_PER_NODE": "2",  # what the operator sets from nprocPerNode
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


def test_pod_script_trains_uploads_and_a_restarted_pod_resumes(s3_env, bucket, prepared, tmp_path):
    (container,) = render("registry.test/excon:1", 1, 2)["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"
    ]["spec"]["containers"]
    assert "workingDir" not in container  # made by the script, as the pod's user
    script = container["args"][0]
    stage = f"s3://{bucket}/stage/run-1/supcon"
    cfg = load_config(
        None,
        [
            "model.width=0.0625",
            "model.proj_dim=8",
            "train.epochs=2",
            "train.batch_size=16",
            "train.device=cpu",
            "tracking.enabled=false",
        ],
    )
    upload_dir(prepared, f"{stage}/data")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "params.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    upload_dir(tmp_path / "params", f"{stage}/params")

    first = run_pod(script, tmp_path / "pod1" / "work", stage, s3_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained supcon") == 1  # rank 0 alone reports
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "stage/run-1/supcon/checkpoint/checkpoint.pt" in keys
    assert "stage/run-1/supcon/run/summary.json" in keys  # the mirror the launcher fetches

    # A restarted pod starts on an empty volume: it restores rank 0's checkpoint and resumes.
    second = run_pod(script, tmp_path / "pod2" / "work", stage, s3_env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restored" in second.stderr and "resuming" in second.stderr
    a = load_file(tmp_path / "pod1" / "work" / "run" / "model.safetensors")
    b = load_file(tmp_path / "pod2" / "work" / "run" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
