"""pretrain_job: the wrapper around pipelines.trainjob.launch (tested against a real S3 server
in tests/storage/test_trainjob_launch.py). Here: it hands launch the task's inputs and turns
the fetched run into the same Model and Metrics a single-GPU pretrain gives."""

import json
from pathlib import Path

from kfp.dsl import Metrics, Model

from components.pretrain_job.component import pretrain_job
from excon.config import loads_config
from pipelines import dag, trainjob
from pipelines.excon_pipeline import RUN_SETTINGS


def test_the_fetched_run_becomes_the_model_artifact(
    make_config, task, dataset, output, monkeypatch
):
    monkeypatch.setenv("EXCON_PIPELINE_RUN", "r1")  # the pod's workflow label on a cluster
    calls = []

    def fake_launch(job, config, method, data, out, stage_url, run_id, selector, tolerations,
                    **kw):  # fmt: skip
        calls.append((job, config, method, data, stage_url, run_id, selector, tolerations, kw))
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"val/top1": 0.25, "epochs": 3}))
        (out / "checkpoint.pt").write_bytes(b"scratch")
        return {"method": method, "val/top1": 0.25, "epochs": 3}

    monkeypatch.setattr(trainjob, "launch", fake_launch)
    model, metrics = output(Model, "model"), output(Metrics, "metrics")
    manifest = trainjob.render("registry.test/excon:1", 2, 2)
    pretrain_job.python_func(
        **task("pretrain", method="supcon"),
        dataset=dataset,
        model=model,
        metrics=metrics,
        job_manifest=json.dumps(manifest),
        staging_url="s3://b/stage",
        node_selector={"pool": "gpu"},
        tolerations=[],
    )
    ((job, config, method, data, url, run_id, selector, _, kw),) = calls
    assert job == manifest and method == "supcon" and data == Path(dataset.path)
    # the job's pods read a whole Config: the study's slice and run settings, the seed, method
    rebuilt, study = loads_config(config).to_dict(), make_config().to_dict()
    keys = [*dag.stage_params("pretrain", "supcon"), *RUN_SETTINGS]
    assert dag.params_slice(rebuilt, keys) == dag.params_slice(study, keys)
    assert (rebuilt["method"]["name"], rebuilt["train"]["seed"]) == ("supcon", 0)
    assert (url, run_id, selector, kw) == (
        "s3://b/stage",
        "r1",
        {"pool": "gpu"},
        {"namespace": "", "timeout_s": 72 * 3600 + 600},  # past the job's own deadline
    )
    assert not (Path(model.path) / "checkpoint.pt").exists()
    assert model.metadata == {"method": "supcon", "seed": 0, "trainjob": True}
    assert metrics.metadata == {"val/top1": 0.25, "epochs": 3.0}
