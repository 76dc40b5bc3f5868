"""A real MLflow server (SQLite backend, artifacts proxied to S3 on the SeaweedFS fixture):
registering a model puts its files in the bucket, and it loads back through the registry."""

import mlflow
import numpy as np
import torch

from excon.artifacts import model_meta, save_model
from excon.config import load_config
from excon.models import ExConNet
from excon.probe import save_probe_head
from excon.registry import register
from excon.serve.model import load_registered, predict_proba
from excon.testing import write_eval_parts


def tiny_run(run_dir):
    torch.manual_seed(0)
    model = ExConNet(num_classes=3, width=0.0625, in_channels=3, proj_dim=8)
    cfg = load_config(None, ["model.width=0.0625", "model.proj_dim=8"])
    meta = {
        "dataset": "blobs",
        "class_names": ["a", "b", "c"],
        "mean": [0.3] * 3,
        "std": [0.25] * 3,
        "image_size": [16, 16],
        "method": "supcon",
        "gradcam_layer": None,
    }
    save_model(run_dir, model, model_meta(cfg.model, 3, 3, meta))
    save_probe_head(run_dir, torch.nn.Linear(model.encoder.feature_dim, 3))
    # every gate metric: the gate never promotes a challenger that lacks one
    gate = {"test/top1": 0.5, "calib/ece": 0.1, "adv/pgd/eps4/acc": 0.3, "expl/avg_drop": 0.4}
    write_eval_parts(run_dir, {"method": "supcon", **gate})
    return run_dir


def test_registered_model_lands_in_the_bucket_and_loads_back(mlflow_server, tmp_path, monkeypatch):
    url, bucket, s3 = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    cfg = load_config(None, [f"tracking.uri={url}", "tracking.model_name=excon-s3test"])
    result = register(cfg, tiny_run(tmp_path / "run"))
    assert result["decision"] == "promoted"

    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("model.safetensors") for k in keys), keys

    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    mlflow.set_tracking_uri(url)
    pyfunc = mlflow.pyfunc.load_model("models:/excon-s3test@champion")
    model, meta = load_registered("models:/excon-s3test@champion", tracking_uri=url)
    np.testing.assert_allclose(
        pyfunc.predict(images), predict_proba(model, meta, images), atol=1e-5
    )
