"""The in-cluster store's two S3 identities (infra/k8s/components/seaweedfs): the manifest's
init script writes the identities file, a real `weed mini` runs with it and the manifest's
buckets, and each key reaches its own buckets and is refused on the other's."""

import json
import secrets
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from excon import storage

MANIFEST = Path(__file__).resolve().parents[2] / "infra/k8s/components/seaweedfs/seaweedfs.yaml"
CONFIG_PATH = "/etc/seaweedfs/s3.json"


def statefulset() -> dict:
    import yaml

    docs = yaml.safe_load_all(MANIFEST.read_text())
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    return sts["spec"]["template"]["spec"]


def write_identities(target: Path, **keys: str) -> subprocess.CompletedProcess:
    """Run the init container's script as the pod would, writing to `target`."""
    (init,) = statefulset()["initContainers"]
    assert init["command"] == ["/bin/sh", "-c"]
    script = init["args"][0]
    assert CONFIG_PATH in script
    env = {"PATH": "/usr/bin:/bin", **keys}
    return subprocess.run(
        ["/bin/sh", "-c", script.replace(CONFIG_PATH, str(target))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def new_keys() -> dict[str, str]:
    return {
        "MLFLOW_KEY": f"mlflow-{secrets.token_hex(6)}",
        "MLFLOW_SECRET": secrets.token_hex(20),
        "PIPELINE_KEY": f"pipeline-{secrets.token_hex(6)}",
        "PIPELINE_SECRET": secrets.token_hex(20),
    }


def client(server, key: str, secret: str):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory, start_weed):
    spec = statefulset()
    (main,) = spec["containers"]
    assert f"-s3.config={CONFIG_PATH}" in main["args"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["identities"]["mountPath"] == str(Path(CONFIG_PATH).parent)
    buckets = [a for a in main["args"] if a.startswith("-bucket=")]
    keys = new_keys()
    root = tmp_path_factory.mktemp("store")
    done = write_identities(root / "s3.json", **keys)
    assert done.returncode == 0, done.stderr
    with start_weed(
        root, root / "s3.json", keys["PIPELINE_KEY"], keys["PIPELINE_SECRET"], *buckets
    ) as server:
        names = buckets[0].removeprefix("-bucket=").split(",")
        wait_for_buckets(server, keys, names)
        yield server, keys, names


def wait_for_buckets(server, keys: dict[str, str], names: list[str], timeout_s: float = 60):
    """weed creates the -bucket buckets shortly after S3 starts answering."""
    owner = {"mlflow": ("MLFLOW_KEY", "MLFLOW_SECRET")}
    deadline = time.monotonic() + timeout_s
    for name in names:
        key, secret = owner.get(name, ("PIPELINE_KEY", "PIPELINE_SECRET"))
        s3 = client(server, keys[key], keys[secret])
        while True:
            try:
                s3.head_bucket(Bucket=name)
                break
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def test_the_manifest_creates_the_buckets_the_keys_are_scoped_to(store):
    _, _, buckets = store  # the fixture waited for each one with its owner's key
    assert buckets == ["mlflow", "dvc", "scratch"]


def test_pipeline_key_works_on_dvc_and_scratch_only(store, tmp_path, monkeypatch):
    server, keys, _ = store
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["PIPELINE_KEY"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["PIPELINE_SECRET"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "checkpoint.pt").write_bytes(b"x" * 1000)
    for bucket in ("dvc", "scratch"):  # what the tasks do: sync, fetch, discard
        url = f"s3://{bucket}/run-1/excon"
        assert storage.upload_dir(tmp_path / "src", url).transferred == ["checkpoint.pt"]
        assert storage.download_dir(url, tmp_path / bucket).transferred == ["checkpoint.pt"]
        assert storage.delete_prefix(url) == 1
    with pytest.raises(storage.StorageError, match="AccessDenied"):
        storage.upload_file(tmp_path / "src" / "checkpoint.pt", "s3://mlflow/stolen.pt")
    denied = client(server, keys["PIPELINE_KEY"], keys["PIPELINE_SECRET"])
    with pytest.raises(ClientError, match="AccessDenied"):
        denied.list_objects_v2(Bucket="mlflow")


def test_mlflow_key_works_on_mlflow_only(store):
    server, keys, _ = store
    s3 = client(server, keys["MLFLOW_KEY"], keys["MLFLOW_SECRET"])
    s3.put_object(Bucket="mlflow", Key="1/artifacts/model.json", Body=b"{}")
    assert s3.get_object(Bucket="mlflow", Key="1/artifacts/model.json")["Body"].read() == b"{}"
    assert s3.list_objects_v2(Bucket="mlflow")["KeyCount"] == 1
    for bucket in ("dvc", "scratch"):
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.put_object(Bucket=bucket, Key="x", Body=b"x")
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.list_objects_v2(Bucket=bucket)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"PIPELINE_KEY": "same"}, "different S3 keys"),
        ({"MLFLOW_SECRET": 'a"b'}, "without quotes"),
        ({"PIPELINE_SECRET": "a\\b"}, "without quotes or backslashes"),
        ({"MLFLOW_KEY": ""}, "non-empty"),
    ],
)
def test_init_script_refuses_bad_keys(tmp_path, change, message):
    keys = {**new_keys(), **change}
    if change.get("PIPELINE_KEY") == "same":
        keys["MLFLOW_KEY"] = "same"
    done = write_identities(tmp_path / "s3.json", **keys)
    assert done.returncode != 0 and message in done.stderr
    assert not (tmp_path / "s3.json").exists()


def test_identities_file_is_private_json(tmp_path):
    keys = new_keys()
    assert write_identities(tmp_path / "s3.json", **keys).returncode == 0
    assert (tmp_path / "s3.json").stat().st_mode & 0o077 == 0
    names = {i["name"]: i for i in json.loads((tmp_path / "s3.json").read_text())["identities"]}
    assert names["pipeline"]["credentials"] == [
        {"accessKey": keys["PIPELINE_KEY"], "secretKey": keys["PIPELINE_SECRET"]}
    ]
