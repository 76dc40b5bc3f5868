"""excon.storage against a real S3 server (SeaweedFS on loopback, see conftest.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from excon import storage
from excon.storage import S3Settings, StorageError

MiB = 1024 * 1024


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- pure helpers ------------------------------------------------------------------------------


def test_parse_s3_url():
    assert storage.parse_s3_url("s3://bucket/key/prefix") == ("bucket", "key/prefix")
    assert storage.parse_s3_url("s3://bucket") == ("bucket", "")
    assert storage.parse_s3_url("s3://bucket/dir/") == ("bucket", "dir")
    for bad in ("bucket/key", "http://bucket/key", "s3:///key"):
        with pytest.raises(StorageError, match="not an s3://"):
            storage.parse_s3_url(bad)


def test_settings_from_env():
    s = S3Settings.from_env({"EXCON_S3_ENDPOINT": "http://e:1", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (s.endpoint_url, s.region) == ("http://e:1", "eu-west-1")
    s = S3Settings.from_env({"AWS_ENDPOINT_URL": "http://a:1", "EXCON_S3_ENDPOINT": "http://e:1"})
    assert (s.endpoint_url, s.region) == ("http://a:1", "us-east-1")
    assert S3Settings.from_env({"AWS_ENDPOINT_URL_S3": "http://s:1"}).endpoint_url == "http://s:1"
    assert S3Settings.from_env({}).endpoint_url is None  # AWS itself


def _client_error(status: int, code: str) -> ClientError:
    meta = {"HTTPStatusCode": status}
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": meta}, "GetObject")


@pytest.mark.parametrize(
    ("exc", "calls"),
    [
        (EndpointConnectionError(endpoint_url="http://x"), 3),
        (_client_error(503, "SlowDown"), 3),
        (_client_error(500, "InternalError"), 3),
        (_client_error(403, "AccessDenied"), 1),  # 4xx: the same request fails the same way
        (_client_error(404, "NoSuchKey"), 1),
        (ValueError("a bug"), 1),
    ],
)
def test_retry_only_transient(exc, calls, monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda _s: None)
    seen = []

    def fail():
        seen.append(1)
        raise exc

    with pytest.raises(type(exc)):
        storage._retry(fail, attempts=3, base_delay=0.01)
    assert len(seen) == calls


# --- against the server ------------------------------------------------------------------------


def test_multipart_round_trip(s3_env, bucket, tmp_path):
    settings = dataclasses.replace(
        S3Settings.from_env(), multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    data = write_random(tmp_path / "big.bin", 11 * MiB)
    url = f"s3://{bucket}/runs/big.bin"
    digest = storage.upload_file(tmp_path / "big.bin", url, settings)
    assert digest == hashlib.sha256(data).hexdigest()

    head = s3_env.client().head_object(Bucket=bucket, Key="runs/big.bin")
    assert head["Metadata"] == {"sha256": digest}
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB: really multipart

    # Above the threshold the download is ranged GETs too.
    assert storage.download_file(url, tmp_path / "out" / "big.bin", settings) == digest
    assert (tmp_path / "out" / "big.bin").read_bytes() == data
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "big.bin"]  # no temp left


@pytest.mark.parametrize("tamper", ["no-metadata", "wrong-metadata"])
def test_tampered_object_is_refused_and_nothing_lands(s3_env, bucket, tmp_path, tamper):
    write_random(tmp_path / "model.bin", 4096)
    url = f"s3://{bucket}/model.bin"
    digest = storage.upload_file(tmp_path / "model.bin", url)
    # Someone overwrites the object with other bytes, without or with a stale checksum.
    meta = {} if tamper == "no-metadata" else {"sha256": digest}
    s3_env.client().put_object(Bucket=bucket, Key="model.bin", Body=b"evil bytes", Metadata=meta)

    out = tmp_path / "out"
    out.mkdir()
    match = "no sha256 metadata" if tamper == "no-metadata" else "checksum mismatch"
    with pytest.raises(StorageError, match=match):
        storage.download_file(url, out / "model.bin")
    assert list(out.iterdir()) == []  # neither the target nor a temp file

    # An existing good copy survives a refused download untouched.
    (out / "model.bin").write_bytes(b"previous good copy")
    with pytest.raises(StorageError, match=match):
        storage.download_file(url, out / "model.bin")
    assert (out / "model.bin").read_bytes() == b"previous good copy"
    assert list(out.iterdir()) == [out / "model.bin"]


def test_dir_round_trip_skips_unchanged(s3_env, bucket, tmp_path):
    src = tmp_path / "src"
    for i, rel in enumerate(["model.json", "weights/model.safetensors", "plots/a/b.png"]):
        write_random(src / rel, 1000 + i, seed=i)
    url = f"s3://{bucket}/runs/r1"

    first = storage.upload_dir(src, url)
    assert sorted(first.transferred) == sorted(tree(src)) and first.skipped == []
    (src / "model.json").write_text('{"changed": true}')
    second = storage.upload_dir(src, url)
    assert second.transferred == ["model.json"]
    assert len(second.skipped) == 2

    dst = tmp_path / "dst"
    got = storage.download_dir(url, dst)
    assert tree(dst) == tree(src) and len(got.transferred) == 3
    (dst / "plots/a/b.png").write_bytes(b"locally corrupted")
    again = storage.download_dir(url, dst)
    assert again.transferred == ["plots/a/b.png"] and len(again.skipped) == 2
    assert tree(dst) == tree(src)


def test_check_access_ok(s3_env, bucket):
    assert storage.check_access(f"s3://{bucket}/anything") is None


@pytest.mark.parametrize("wrong", ["secret", "access-key"])
def test_wrong_credentials_clear_error(s3_env, bucket, tmp_path, monkeypatch, wrong):
    if wrong == "secret":  # SignatureDoesNotMatch (a bare 403 on HEAD)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    else:  # InvalidAccessKeyId
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    expected = f"S3 rejected the credentials for {s3_env.endpoint} \\(check AWS_ACCESS_KEY_ID"
    with pytest.raises(StorageError, match=expected):
        storage.check_access(f"s3://{bucket}/x")
    write_random(tmp_path / "f.bin", 100)
    with pytest.raises(StorageError, match=expected):
        storage.upload_file(tmp_path / "f.bin", f"s3://{bucket}/f.bin")


def test_missing_bucket_and_object_clear_errors(s3_env, bucket, tmp_path):
    missing = "excon-no-such-bucket"
    expected = f"bucket {missing} does not exist at {s3_env.endpoint}"
    write_random(tmp_path / "f.bin", 100)
    for call in (
        lambda: storage.check_access(f"s3://{missing}/x"),
        lambda: storage.upload_file(tmp_path / "f.bin", f"s3://{missing}/f.bin"),
        lambda: storage.download_file(f"s3://{missing}/f.bin", tmp_path / "g.bin"),
        lambda: storage.upload_dir(tmp_path, f"s3://{missing}/d"),
    ):
        with pytest.raises(StorageError, match=expected):
            call()
    with pytest.raises(StorageError, match=f"object s3://{bucket}/nope does not exist"):
        storage.download_file(f"s3://{bucket}/nope", tmp_path / "g.bin")
    assert not (tmp_path / "g.bin").exists()


def test_unreachable_endpoint_bounded_retries(s3_env, closed_port, tmp_path, caplog):
    endpoint = f"http://127.0.0.1:{closed_port}"
    # botocore's max_attempts counts retries after the first try: 0 leaves only ours, countable.
    settings = S3Settings(
        endpoint_url=endpoint, max_attempts=0, transfer_attempts=3, base_delay=0.05
    )
    write_random(tmp_path / "f.bin", 100)
    caplog.set_level(logging.WARNING, logger="excon.storage")
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {endpoint}"):
        storage.upload_file(tmp_path / "f.bin", "s3://bucket/f.bin", settings)
    assert time.monotonic() - start < 3
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2  # 3 attempts


def test_delete_prefix_deletes_one_folder_in_batches(s3_env, bucket):
    s3 = s3_env.client()
    keep = ["runs/run-10/checkpoint.pt", "runs/run-1.txt", "other/x"]
    gone = [f"runs/run-1/part-{i:04d}" for i in range(1001)]  # two DeleteObjects batches
    for key in keep + gone:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert storage.delete_prefix(f"s3://{bucket}/runs/run-1/") == 1001
    left = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(o["Key"] for o in left) == sorted(keep)
    assert storage.delete_prefix(f"s3://{bucket}/runs/run-1") == 0  # nothing left: no error


def test_delete_prefix_refuses_a_whole_bucket(s3_env, bucket):
    with pytest.raises(StorageError, match=f"refusing to delete everything in bucket {bucket}"):
        storage.delete_prefix(f"s3://{bucket}/")
