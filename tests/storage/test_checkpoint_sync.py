"""A retried cluster pretrain task resumes from the checkpoint it left in S3 (a real SeaweedFS
server): the pretrain component restores it, resumes, and ends with the weights of a run that
was never interrupted."""

import pytest
import yaml
from kfp.dsl import Dataset, Metrics, Model
from safetensors.torch import load_file

from components.pretrain.component import pretrain as pretrain_component
from excon import stages


class Killed(RuntimeError):
    pass


def test_restore_is_false_when_nothing_was_saved(s3_env, bucket, tmp_path):
    assert stages.restore_checkpoint(f"s3://{bucket}/none", tmp_path / "run") is False
    assert not (tmp_path / "run").exists()


def test_a_retry_resumes_from_the_uploaded_checkpoint(
    s3_env, bucket, prepared, tiny_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("EXCON_PARENT_RUN_ID", "")
    overrides = ["method.name=supcon", "train.epochs=2", "tracking.enabled=false"]
    cfg = tiny_config(*overrides)
    url = f"s3://{bucket}/ckpt/supcon"

    # attempt 1: killed after its first epoch, once that epoch's checkpoint is uploaded
    def upload_then_die(row):
        stages.save_checkpoint(url, tmp_path / "attempt1")
        raise Killed(f"killed after epoch {row['epoch']}")

    with pytest.raises(Killed):
        stages.pretrain(cfg, prepared, tmp_path / "attempt1", False, on_epoch=upload_then_die)
    assert s3_env.client().head_object(Bucket=bucket, Key="ckpt/supcon/checkpoint.pt")

    # attempt 2: a fresh pod (empty output dir) runs the component with the same url
    model = Model(name="model", uri=str(tmp_path / "attempt2"), metadata={})
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    pretrain_component.python_func(
        config=yaml.safe_dump(cfg.to_dict()),
        method="supcon",
        dataset=Dataset(name="dataset", uri=str(prepared), metadata={}),
        model=model,
        metrics=metrics,
        checkpoint_url=url,
    )
    assert model.metadata["resumed"] is True
    assert not (tmp_path / "attempt2" / "checkpoint.pt").exists()  # scratch, not the model

    # the reference: the same two epochs without interruption
    stages.pretrain(cfg, prepared, tmp_path / "whole", False)
    resumed = load_file(tmp_path / "attempt2" / "model.safetensors")
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    assert resumed.keys() == whole.keys()
    assert all((resumed[k] == whole[k]).all() for k in whole)
    assert 0 <= metrics.metadata["val/top1"] <= 1
