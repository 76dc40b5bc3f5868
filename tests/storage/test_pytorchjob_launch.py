"""The pretrain task's PyTorchJob launcher against a real S3 server (SeaweedFS). The Kubernetes
API is a stand-in (no cluster here) that plays the Training Operator: on create it checks what
the pods would get and, as rank 0 would, mirrors a finished run to the staging URL."""

import json

import pytest
import yaml

from excon.config import load_config
from excon.storage import upload_dir
from pipelines.pytorchjob import JobError, launch, render


class Conflict(Exception):
    """What kubernetes' ApiException carries for AlreadyExists."""

    status = 409


class Operator:
    """CustomObjectsApi's two calls the launcher makes, answered like the Training Operator."""

    def __init__(self, s3, bucket, tmp, outcome="Succeeded", existing=None, existing_stage=None):
        self.s3, self.bucket, self.tmp, self.outcome = s3, bucket, tmp, outcome
        self.existing = existing or {}  # name -> state of jobs an earlier attempt left
        self.existing_stage = existing_stage or f"s3://{bucket}/stage/1234abcd-run/excon"
        self.created: list[dict] = []
        self.polls = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        if body["metadata"]["name"] in self.existing:
            raise Conflict()
        self.created.append(body)
        env = {e["name"]: e["value"] for e in self._container(body)["env"]}
        stage = env["EXCON_STAGE_URL"].removeprefix(f"s3://{self.bucket}/")
        # what the pods download must be there before the job exists
        keys = {o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket)["Contents"]}
        assert f"{stage}/data/manifest.json" in keys and f"{stage}/params/params.yaml" in keys
        if self.outcome == "Succeeded":  # rank 0's mirror of the finished run (excon.storage)
            mirror_run(self.tmp / f"rank0-run-{len(self.created)}", env["EXCON_STAGE_URL"])

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        finished = self.existing.get(name) in ("Failed", "Succeeded")
        if finished:  # an earlier attempt's job, already over
            return job_with(self.existing_stage, [{"type": self.existing[name], "status": "True"}])
        self.polls += 1
        running = {"type": "Running", "status": "True"}
        done = {"type": self.outcome, "status": "True", "message": "pod master-0 OOMKilled"}
        return job_with(self.existing_stage, [running] if self.polls < 2 else [running, done])

    @staticmethod
    def _container(body):
        return body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


def mirror_run(run, stage_url):
    run.mkdir()
    summary = {"method": "excon", "val/top1": 0.5, "epochs": 2}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "model.json").write_text("{}")
    upload_dir(run, f"{stage_url}/run")


def job_with(stage_url, conditions):
    env = [{"name": "EXCON_STAGE_URL", "value": stage_url}]
    pod = {"spec": {"containers": [{"env": env}]}}
    return {
        "spec": {"pytorchReplicaSpecs": {"Master": {"template": pod}}},
        "status": {"conditions": conditions},
    }


def run_launch(api, prepared, tmp_path, bucket, **kw):
    cfg = load_config(None, ["train.epochs=2"])
    return launch(
        render("registry.test/excon:1", 2, 4),
        yaml.safe_dump(cfg.to_dict()),
        "excon",
        prepared,
        tmp_path / "model",
        f"s3://{bucket}/stage",
        "1234abcd-run",
        {"pool": "h100"},
        [{"key": "gpu", "operator": "Exists"}],
        namespace="team",
        api=api,
        **kw,
    )


def test_launch_stages_runs_and_fetches(s3_env, bucket, prepared, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    api = Operator(s3_env.client(), bucket, tmp_path)
    summary = run_launch(api, prepared, tmp_path, bucket)
    assert summary == {"method": "excon", "val/top1": 0.5, "epochs": 2}
    assert (tmp_path / "model" / "model.json").is_file()
    left = api.s3.list_objects_v2(Bucket=bucket, Prefix="stage/").get("Contents", [])
    assert left == []  # the staged inputs and the mirrored run are deleted once fetched
    (job,) = api.created
    assert job["metadata"]["name"] == "excon-pretrain-excon-4abcdrun-0"
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert env["EXCON_STAGE_URL"] == f"s3://{bucket}/stage/1234abcd-run/excon"
        assert env["EXCON_PIPELINE_RUN"] == "1234abcd-run"  # pods find the MLflow parent
        assert pod["nodeSelector"] == {"pool": "h100"}  # the run's scheduling parameters
        assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_a_failed_job_is_one_line(s3_env, bucket, prepared, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    api = Operator(s3_env.client(), bucket, tmp_path, outcome="Failed")
    with pytest.raises(JobError, match="failed: pod master-0 OOMKilled"):
        run_launch(api, prepared, tmp_path, bucket)
    assert not (tmp_path / "model").exists()
    kept = api.s3.list_objects_v2(Bucket=bucket, Prefix="stage/1234abcd-run/excon/params/")
    assert kept["KeyCount"] == 1  # a failed job's inputs stay, to look into


def test_a_job_that_never_ends_times_out(s3_env, bucket, prepared, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    api = Operator(s3_env.client(), bucket, tmp_path)
    api.get_namespaced_custom_object = lambda *a: {"status": {"conditions": []}}
    with pytest.raises(JobError, match="still running after 0 s"):
        run_launch(api, prepared, tmp_path, bucket, timeout_s=0)


def test_a_retried_task_adopts_its_predecessors_job(
    s3_env, bucket, prepared, tmp_path, monkeypatch
):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    running = {"excon-pretrain-excon-4abcdrun-0": "Running"}
    api = Operator(s3_env.client(), bucket, tmp_path, outcome="Failed", existing=running)
    with pytest.raises(JobError, match="excon-pretrain-excon-4abcdrun-0 failed"):
        run_launch(api, prepared, tmp_path, bucket)  # waited on the running one: no new job
    assert api.created == []


def test_after_a_failed_job_a_retry_creates_the_next_one(
    s3_env, bucket, prepared, tmp_path, monkeypatch
):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    failed = {"excon-pretrain-excon-4abcdrun-0": "Failed"}
    api = Operator(s3_env.client(), bucket, tmp_path, existing=failed)
    assert run_launch(api, prepared, tmp_path, bucket)["method"] == "excon"
    assert [j["metadata"]["name"] for j in api.created] == ["excon-pretrain-excon-4abcdrun-1"]


def test_a_succeeded_job_is_adopted_only_while_its_run_is_staged(
    s3_env, bucket, prepared, tmp_path, monkeypatch
):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    done = {"excon-pretrain-excon-4abcdrun-0": "Succeeded"}
    # its run still staged (the task died before fetching it): adopted, nothing created
    mirror_run(tmp_path / "earlier", f"s3://{bucket}/stage/1234abcd-run/excon")
    api = Operator(s3_env.client(), bucket, tmp_path, existing=done)
    assert run_launch(api, prepared, tmp_path, bucket)["epochs"] == 2
    assert api.created == []
    # fetched and deleted already (the task died after): a new job, not a run that is gone
    api = Operator(s3_env.client(), bucket, tmp_path, existing=done)
    assert run_launch(api, prepared, tmp_path / "again", bucket)["epochs"] == 2
    assert [j["metadata"]["name"] for j in api.created] == ["excon-pretrain-excon-4abcdrun-1"]


def test_a_job_of_another_run_under_the_same_name_is_refused(
    s3_env, bucket, prepared, tmp_path, monkeypatch
):
    monkeypatch.setattr("pipelines.pytorchjob.time.sleep", lambda s: None)
    api = Operator(
        s3_env.client(),
        bucket,
        tmp_path,
        existing={"excon-pretrain-excon-4abcdrun-0": "Running"},
        existing_stage=f"s3://{bucket}/stage/other-1234abcd-run/excon",
    )
    with pytest.raises(JobError, match="exists for another run"):
        run_launch(api, prepared, tmp_path, bucket)
    assert api.created == []
