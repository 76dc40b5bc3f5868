"""The pretrain task's TrainJob launcher against a real S3 server (SeaweedFS). The Kubernetes API
is a stand-in (no cluster here) that plays Kubeflow Trainer: on create it checks the job against
the TrainJob CRD and what the pods would get and, as rank 0 would, mirrors a finished run to the
staging URL. The job is watched and deleted by the Kubeflow SDK's own TrainerClient, whose
Kubernetes clients are the stand-in."""

import datetime
import json
import os
import signal

import pytest
import yaml
from kubeflow.trainer import TrainerClient
from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend
from kubernetes.client import ApiException

from excon.config import load_config
from excon.storage import upload_dir
from pipelines import lifecycle
from pipelines.trainjob import GROUP, PLURAL, VERSION, JobError, launch, render
from tests.infra.test_training_manifests import FIXTURES, validate

NAME0 = "excon-pretrain-excon-4abcdrun-0"


class Async:
    """What kubernetes' `async_req=True` calls return: `.get(timeout)`."""

    def __init__(self, value):
        self.value = value

    def get(self, timeout=None):
        return self.value


class Pods(dict):
    def to_dict(self):
        return dict(self)


class Cluster:
    """CustomObjectsApi and CoreV1Api as the launcher and TrainerClient call them, answered like
    Kubeflow Trainer and Argo would."""

    def __init__(self, s3, bucket, tmp, outcome="Complete", existing=None, existing_stage=None):
        self.s3, self.bucket, self.tmp, self.outcome = s3, bucket, tmp, outcome
        self.existing = existing or {}  # name -> state of jobs an earlier attempt left
        self.existing_stage = existing_stage or f"s3://{bucket}/stage/1234abcd-run/excon"
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.polls = 0
        self.on_poll = None  # called on every poll of the job (e.g. to send SIGTERM)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        validate(body)  # what the API server would accept
        if body["metadata"]["name"] in self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append(body)
        env = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
        stage = env["EXCON_STAGE_URL"].removeprefix(f"s3://{self.bucket}/")
        # what the pods download must be there before the job exists
        keys = {o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket)["Contents"]}
        assert f"{stage}/data/manifest.json" in keys and f"{stage}/params/params.yaml" in keys
        if self.outcome == "Complete":  # rank 0's mirror of the finished run (excon.storage)
            mirror_run(self.tmp / f"rank0-run-{len(self.created)}", env["EXCON_STAGE_URL"])

    def get_namespaced_custom_object(
        self, group, version, namespace, plural, name, async_req=False
    ):
        if plural == "workflows":
            return {"metadata": {"name": name, "uid": "uid-of-the-workflow"}}
        if plural == "trainingruntimes":  # none in the namespace: the cluster's is used
            raise ApiException(status=404, reason="NotFound")
        assert plural == PLURAL
        if self.on_poll:
            self.on_poll()
        if self.existing.get(name) in ("Failed", "Complete"):  # an earlier attempt's, over
            job = job_with(name, self.existing_stage, [condition(self.existing[name])])
        else:
            self.polls += 1
            conditions = [] if self.polls < 2 else [condition(self.outcome, "node-0 OOMKilled")]
            stage = self.existing_stage if name in self.existing else self.created[-1]
            job = job_with(name, stage, conditions)
        return Async(job) if async_req else job

    def get_cluster_custom_object(self, group, version, plural, name, async_req=False):
        assert (plural, name) == ("clustertrainingruntimes", "torch-distributed")
        return Async(
            yaml.safe_load((FIXTURES / "torch_distributed_runtime_v2.3.0.yaml").read_text())
        )

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.deleted.append(name)

    def list_namespaced_pod(self, namespace, label_selector, async_req=False):
        name = self.created[-1]["metadata"]["name"] if self.created else NAME0
        assert f"jobset.sigs.k8s.io/jobset-name={name}" in label_selector
        return Async(Pods(items=[]))


def condition(kind, message=""):
    return {"type": kind, "status": "True", "reason": kind, "message": message,
            "lastTransitionTime": "2026-12-03T10:00:00Z"}  # fmt: skip


def job_with(name, stage, conditions):
    """A TrainJob as the API server returns it."""
    body = stage if isinstance(stage, dict) else render("registry.test/excon:1", 2, 4)
    if not isinstance(stage, dict):
        for var in body["spec"]["trainer"]["env"]:
            if var["name"] == "EXCON_STAGE_URL":
                var["value"] = stage
    now = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC).isoformat()
    meta = {**body["metadata"], "name": name, "namespace": "team", "creationTimestamp": now}
    return {**body, "metadata": meta, "status": {"conditions": conditions}}


def mirror_run(run, stage_url):
    run.mkdir()
    summary = {"method": "excon", "val/top1": 0.5, "epochs": 2}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "model.json").write_text("{}")
    upload_dir(run, f"{stage_url}/run")


def sdk(cluster) -> TrainerClient:
    """The Kubeflow SDK's TrainerClient with the stand-in as its Kubernetes clients."""
    backend = object.__new__(KubernetesBackend)
    backend.custom_api = backend.core_api = cluster
    backend.namespace = "team"
    client = object.__new__(TrainerClient)
    client.backend = backend
    return client


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    monkeypatch.setattr("kubeflow.trainer.backends.kubernetes.backend.time.sleep", lambda s: None)


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
        trainer=sdk(api),
        **kw,
    )


def test_launch_stages_runs_and_fetches(s3_env, bucket, prepared, tmp_path):
    api = Cluster(s3_env.client(), bucket, tmp_path)
    summary = run_launch(api, prepared, tmp_path, bucket)
    assert summary == {"method": "excon", "val/top1": 0.5, "epochs": 2}
    assert (tmp_path / "model" / "model.json").is_file()
    left = api.s3.list_objects_v2(Bucket=bucket, Prefix="stage/").get("Contents", [])
    assert left == []  # the staged inputs and the mirrored run are deleted once fetched
    (job,) = api.created
    assert job["metadata"]["name"] == NAME0
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "1234abcd-run",
         "uid": "uid-of-the-workflow", "blockOwnerDeletion": False}
    ]  # fmt: skip
    assert job["metadata"]["labels"][lifecycle.RUN_LABEL] == "1234abcd-run"
    env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
    assert env["EXCON_STAGE_URL"] == f"s3://{bucket}/stage/1234abcd-run/excon"
    assert env["EXCON_PIPELINE_RUN"] == "1234abcd-run"  # pods find the MLflow parent
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "h100"}  # the run's scheduling parameters
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert api.deleted == []


def test_a_failed_job_is_one_line(s3_env, bucket, prepared, tmp_path):
    api = Cluster(s3_env.client(), bucket, tmp_path, outcome="Failed")
    with pytest.raises(JobError, match=f"{NAME0} failed: node-0 OOMKilled"):
        run_launch(api, prepared, tmp_path, bucket)
    assert not (tmp_path / "model").exists()
    kept = api.s3.list_objects_v2(Bucket=bucket, Prefix="stage/1234abcd-run/excon/params/")
    assert kept["KeyCount"] == 1  # a failed job's inputs stay, to look into


def test_a_job_that_never_ends_times_out(s3_env, bucket, prepared, tmp_path):
    api = Cluster(s3_env.client(), bucket, tmp_path, outcome="Running")
    with pytest.raises(JobError, match="still running after 2 s"):
        run_launch(api, prepared, tmp_path, bucket, timeout_s=2)


def test_sigterm_deletes_the_job_and_exits(s3_env, bucket, prepared, tmp_path):
    """Argo stops a cancelled run's task with SIGTERM: the launcher deletes its TrainJob (its
    GPUs are free at once, not when the Workflow is garbage-collected) and exits 143."""
    api = Cluster(s3_env.client(), bucket, tmp_path, outcome="Running")
    api.on_poll = lambda: os.kill(os.getpid(), signal.SIGTERM) if api.polls == 1 else None
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run_launch(api, prepared, tmp_path, bucket)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert api.deleted == [NAME0]
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_a_retried_task_adopts_its_predecessors_job(s3_env, bucket, prepared, tmp_path):
    api = Cluster(s3_env.client(), bucket, tmp_path, outcome="Failed", existing={NAME0: "Running"})
    with pytest.raises(JobError, match=f"{NAME0} failed"):
        run_launch(api, prepared, tmp_path, bucket)  # waited on the running one: no new job
    assert api.created == []


def test_after_a_failed_job_a_retry_creates_the_next_one(s3_env, bucket, prepared, tmp_path):
    api = Cluster(s3_env.client(), bucket, tmp_path, existing={NAME0: "Failed"})
    assert run_launch(api, prepared, tmp_path, bucket)["method"] == "excon"
    assert [j["metadata"]["name"] for j in api.created] == ["excon-pretrain-excon-4abcdrun-1"]


def test_a_complete_job_is_adopted_only_while_its_run_is_staged(s3_env, bucket, prepared, tmp_path):
    done = {NAME0: "Complete"}
    # its run still staged (the task died before fetching it): adopted, nothing created
    mirror_run(tmp_path / "earlier", f"s3://{bucket}/stage/1234abcd-run/excon")
    api = Cluster(s3_env.client(), bucket, tmp_path, existing=done)
    assert run_launch(api, prepared, tmp_path, bucket)["epochs"] == 2
    assert api.created == []
    # fetched and deleted already (the task died after): a new job, not a run that is gone
    api = Cluster(s3_env.client(), bucket, tmp_path, existing=done)
    assert run_launch(api, prepared, tmp_path / "again", bucket)["epochs"] == 2
    assert [j["metadata"]["name"] for j in api.created] == ["excon-pretrain-excon-4abcdrun-1"]


def test_a_job_of_another_run_under_the_same_name_is_refused(s3_env, bucket, prepared, tmp_path):
    api = Cluster(s3_env.client(), bucket, tmp_path, existing={NAME0: "Running"},
                  existing_stage=f"s3://{bucket}/stage/other-1234abcd-run/excon")  # fmt: skip
    with pytest.raises(JobError, match="exists for another run"):
        run_launch(api, prepared, tmp_path, bucket)
    assert api.created == []
