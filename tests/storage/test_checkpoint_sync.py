"""A retried cluster pretrain task resumes from the checkpoint it left in S3 (a real SeaweedFS
server): the pretrain component restores it, resumes, and ends with the weights of a run that
was never interrupted."""

import os

import pytest
from kfp.dsl import Dataset, Metrics, Model
from safetensors.torch import load_file

from components.pretrain.component import pretrain as pretrain_component
from excon import stages
from pipelines.excon_pipeline import RUN_SETTINGS_ENV, run_settings, task_inputs


class Killed(RuntimeError):
    pass


def run_component(cfg, method, prepared, out, base, run_id):
    os.environ["EXCON_PIPELINE_RUN"] = run_id  # the pod's workflow label on a cluster
    os.environ[RUN_SETTINGS_ENV] = run_settings(cfg)  # as the pipeline sets it on the pod
    model = Model(name="model", uri=str(out), metadata={})
    metrics = Metrics(name="metrics", uri=f"{out}-metrics", metadata={})
    pretrain_component.python_func(
        **task_inputs(cfg, "pretrain", method),
        dataset=Dataset(name="dataset", uri=str(prepared), metadata={}),
        model=model,
        metrics=metrics,
        checkpoint_url=base,
    )
    return model, metrics


def test_restore_is_false_when_nothing_was_saved(s3_env, bucket, tmp_path):
    assert stages.restore_checkpoint(f"s3://{bucket}/none", tmp_path / "run") is False
    assert not (tmp_path / "run").exists()


def test_a_retry_resumes_from_the_uploaded_checkpoint(
    s3_env, bucket, prepared, tiny_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("EXCON_PARENT_RUN_ID", "")
    monkeypatch.setenv("EXCON_PIPELINE_RUN", "")  # restored after run_component sets it
    overrides = ["method.name=supcon", "train.epochs=2", "tracking.enabled=false"]
    cfg = tiny_config(*overrides)
    base, run_id = f"s3://{bucket}/ckpt", "run-1"
    url = f"{base}/{run_id}/supcon"  # where the component keeps supcon's checkpoint

    # attempt 1: killed after its first epoch, once that epoch's checkpoint is uploaded
    def upload_then_die(row):
        stages.save_checkpoint(url, tmp_path / "attempt1")
        raise Killed(f"killed after epoch {row['epoch']}")

    with pytest.raises(Killed):
        stages.pretrain(cfg, prepared, tmp_path / "attempt1", False, on_epoch=upload_then_die)
    assert s3_env.client().head_object(Bucket=bucket, Key="ckpt/run-1/supcon/checkpoint.pt")

    # attempt 2: a fresh pod (empty output dir) runs the component with the same url
    model, metrics = run_component(cfg, "supcon", prepared, tmp_path / "attempt2", base, run_id)
    assert model.metadata["resumed"] is True
    assert not (tmp_path / "attempt2" / "checkpoint.pt").exists()  # scratch, not the model
    left = s3_env.client().list_objects_v2(Bucket=bucket, Prefix="ckpt/").get("Contents", [])
    assert left == []  # complete: the checkpoint no retry needs is deleted

    # the reference: the same two epochs without interruption
    stages.pretrain(cfg, prepared, tmp_path / "whole", False)
    resumed = load_file(tmp_path / "attempt2" / "model.safetensors")
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    assert resumed.keys() == whole.keys()
    assert all((resumed[k] == whole[k]).all() for k in whole)
    assert 0 <= metrics.metadata["val/top1"] <= 1


def test_methods_and_runs_keep_their_checkpoints_apart(
    s3_env, bucket, prepared, tiny_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("EXCON_PARENT_RUN_ID", "")
    monkeypatch.setenv("EXCON_PIPELINE_RUN", "")  # restored after run_component sets it
    cfg = tiny_config("method.name=supcon", "train.epochs=2", "tracking.enabled=false")
    base, killed = f"s3://{bucket}/ckpt", tmp_path / "killed"

    def upload_then_die(row):  # supcon of run-1 is killed after epoch 1
        stages.save_checkpoint(f"{base}/run-1/supcon", killed)
        raise Killed(f"killed after epoch {row['epoch']}")

    with pytest.raises(Killed):
        stages.pretrain(cfg, prepared, killed, False, on_epoch=upload_then_die)
    # neither another method of that run nor that method in another run takes it
    ce, _ = run_component(cfg, "ce", prepared, tmp_path / "c", base, "run-1")
    other, _ = run_component(cfg, "supcon", prepared, tmp_path / "s2", base, "run-2")
    retry, _ = run_component(cfg, "supcon", prepared, tmp_path / "s1", base, "run-1")
    assert [m.metadata["resumed"] for m in (ce, other, retry)] == [False, False, True]
    assert s3_env.client().list_objects_v2(Bucket=bucket, Prefix="ckpt/")["KeyCount"] == 0


def test_cli_checkpoint_url_restores_and_fresh_discards(
    s3_env, bucket, prepared, tmp_path, monkeypatch, capsys
):
    """`excon pretrain --checkpoint-url`: a checkpoint found there is restored (so a run without
    a resume flag stops, as with a local one), and --fresh deletes it instead of restoring."""
    from excon.artifacts import load_checkpoint
    from excon.cli import main
    from excon.storage import upload_file

    monkeypatch.chdir(tmp_path)
    url = f"s3://{bucket}/ckpt/solo"
    (tmp_path / "stale.pt").write_bytes(b"stale")
    upload_file(tmp_path / "stale.pt", f"{url}/checkpoint.pt")
    tiny = ["model.width=0.0625", "model.proj_dim=8", "train.batch_size=16", "train.device=cpu"]
    tiny += ["tracking.enabled=false", "method.name=ce", "train.epochs=1"]
    sets = [f"--set={s}" for s in tiny]
    args = ["pretrain", "--data", str(prepared), "--run-dir", "run", "--checkpoint-url", url]
    assert main([*args, *sets]) == 2
    assert "exists; pass --resume" in capsys.readouterr().err
    assert main([*args, "--fresh", *sets]) == 0
    s3_env.client().download_file(bucket, "ckpt/solo/checkpoint.pt", str(tmp_path / "got.pt"))
    assert load_checkpoint(tmp_path / "got.pt")["epoch"] == 1  # this run's, not the stale one
