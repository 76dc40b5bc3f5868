"""S3 object store access (boto3): upload/download with sha256 checksums and retries.

Works with AWS S3 and S3-compatible servers (MinIO, SeaweedFS). Every object this module writes
carries the sha256 of its bytes as user metadata (`x-amz-meta-sha256`); downloads are verified
against it and land atomically, so a reader never finds a partial or corrupt file in place.
Credentials come from boto3's standard chain (environment, profile, instance role); this module
never reads or logs them. Every failure surfaces as one `StorageError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.exceptions import RetriesExceededError
from s3transfer.subscribers import BaseSubscriber

log = logging.getLogger(__name__)

SHA256_KEY = "sha256"  # user metadata key: sent and stored as x-amz-meta-sha256
MiB = 1024 * 1024
_T = TypeVar("_T")

# Errors worth another try: the network or the server hiccuped, the request itself was fine.
# s3transfer raises RetriesExceededError when a streamed download kept breaking.
_NETWORK_ERRORS = (
    EndpointConnectionError,  # includes ConnectTimeoutError
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,
    RetriesExceededError,
)
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied"}


class StorageError(Exception):
    """An object store operation failed; the message is one actionable line."""


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None  # None: AWS itself
    region: str = "us-east-1"
    max_attempts: int = 3  # botocore's retries of one request, after the first try (0: none)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    transfer_attempts: int = 3  # our tries of a whole operation (each try: botocore retries)
    base_delay: float = 1.0  # seconds; doubled per attempt, with jitter
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        endpoint = (
            env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or env.get("EXCON_S3_ENDPOINT")
            or None
        )
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(endpoint_url=endpoint, region=region)


def client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client; path-style addressing for custom endpoints, whose buckets are not DNS
    names (MinIO, SeaweedFS)."""
    s = settings or S3Settings.from_env()
    config = Config(
        retries={"max_attempts": s.max_attempts, "mode": "standard"},
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        s3={"addressing_style": "path"} if s.endpoint_url else None,
    )
    # A fresh session per client: boto3's default session is not safe to share across threads.
    return boto3.session.Session().client(
        "s3", endpoint_url=s.endpoint_url, region_name=s.region, config=config
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key/prefix` -> ("bucket", "key/prefix"); the key may be empty."""
    scheme, sep, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise StorageError(f"not an s3://bucket/key URL: {url!r}")
    return bucket, key.strip("/")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _NETWORK_ERRORS):
        return True
    if isinstance(exc, ClientError):  # server-side trouble only; a 4xx will fail again
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or code == "SlowDown"
    return False


def _retry(fn: Callable[[], _T], attempts: int, base_delay: float) -> _T:
    """Call fn, retrying transient failures with exponential backoff and jitter. botocore already
    retries single requests; this covers a whole transfer dying midway (a dropped connection)."""
    attempts = max(attempts, 1)
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not _is_transient(exc):
                raise
            delay = min(base_delay * 2**attempt, 30.0)
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: clients don't sync up
            log.warning(
                "S3 %s (attempt %d/%d); retrying in %.1fs",
                type(exc).__name__,
                attempt + 1,
                attempts,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class _KnownObject(BaseSubscriber):
    """Hands s3transfer the size and ETag from our HEAD: it skips its own HEAD and sends them as
    IfMatch on ranged GETs, so every part comes from the object whose sha256 we read."""

    def __init__(self, size: int, etag: str) -> None:
        self.size, self.etag = size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        future.meta.provide_object_etag(self.etag)


class _Store:
    """A client plus the settings it was built from; translates errors into StorageError."""

    def __init__(self, settings: S3Settings | None) -> None:
        self.settings = settings or S3Settings.from_env()
        self.s3 = client(self.settings)
        self.endpoint = self.s3.meta.endpoint_url

    def call(self, fn: Callable[[], _T], bucket: str) -> _T:
        s = self.settings
        try:
            return _retry(fn, s.transfer_attempts, s.base_delay)
        except (NoCredentialsError, PartialCredentialsError) as e:
            hint = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            raise StorageError(f"no S3 credentials found ({hint})") from e
        except _NETWORK_ERRORS as e:
            raise StorageError(
                f"cannot reach S3 endpoint {self.endpoint} ({type(e).__name__}, "
                f"{s.transfer_attempts} attempts)"
            ) from e
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in _CREDENTIAL_CODES:
                raise StorageError(
                    f"S3 rejected the credentials for {self.endpoint} "
                    f"(check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): {code}"
                ) from e
            if code == "NoSuchBucket":
                raise StorageError(f"bucket {bucket} does not exist at {self.endpoint}") from e
            raise StorageError(f"S3 error at {self.endpoint}: {e}") from e

    def head_bucket(self, bucket: str) -> None:
        try:
            self.call(lambda: self.s3.head_bucket(Bucket=bucket), bucket)
        except StorageError as e:
            # HEAD responses have no body, so a missing bucket is a bare 404, not NoSuchBucket.
            if _code(e) in {"404", "NoSuchBucket"}:
                raise StorageError(f"bucket {bucket} does not exist at {self.endpoint}") from e
            raise

    def head_object(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None when it does not exist (in an existing bucket)."""
        try:
            return self.call(lambda: self.s3.head_object(Bucket=bucket, Key=key), bucket)
        except StorageError as e:
            if _code(e) not in {"404", "NoSuchKey"}:
                raise
        self.head_bucket(bucket)  # a missing bucket also answers 404: say which it is
        return None

    def transfer_config(self) -> TransferConfig:
        s = self.settings
        return TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.max_concurrency,
            preferred_transfer_client="classic",  # same code path everywhere (no CRT)
        )

    def upload(self, path: Path, bucket: str, key: str, digest: str) -> None:
        def attempt() -> None:
            # The transfer manager directly, not client.upload_file: that wraps ClientError in
            # S3UploadFailedError, losing the error code we translate.
            with create_transfer_manager(self.s3, self.transfer_config()) as tm:
                extra = {"Metadata": {SHA256_KEY: digest}}
                tm.upload(str(path), bucket, key, extra_args=extra).result()

        self.call(attempt, bucket)

    def download(self, bucket: str, key: str, path: Path, head: Mapping[str, Any]) -> str:
        """Fetch into a temp file next to `path`, verify its sha256, then rename it into place."""
        url = f"s3://{bucket}/{key}"
        expected = head.get("Metadata", {}).get(SHA256_KEY)
        if not expected:
            raise StorageError(f"{url} has no sha256 metadata, so it cannot be verified")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)

        def attempt() -> None:
            known = _KnownObject(head["ContentLength"], head["ETag"])
            with create_transfer_manager(self.s3, self.transfer_config()) as tm:
                tm.download(bucket, key, tmp, subscribers=[known]).result()

        try:
            self.call(attempt, bucket)
            actual = sha256_file(tmp)
            if actual != expected:
                raise StorageError(f"checksum mismatch for {url}: sha256 {actual} != {expected}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return actual

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in self.call(lambda: list(pages), bucket):
            for obj in page.get("Contents", []):
                yield obj["Key"]


def _code(e: StorageError) -> str:
    cause = e.__cause__
    return cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def check_access(url: str, settings: S3Settings | None = None) -> None:
    """Cheap preflight for stages about to do long work: the bucket exists and the credentials
    are accepted. Raises StorageError otherwise."""
    bucket, _ = parse_s3_url(url)
    _Store(settings).head_bucket(bucket)


def upload_file(path: str | Path, url: str, settings: S3Settings | None = None) -> str:
    """Upload one file to `s3://bucket/key` with its sha256 as metadata; returns the digest.
    Files above `settings.multipart_threshold` go up in parallel parts."""
    bucket, key = parse_s3_url(url)
    if not key:
        raise StorageError(f"{url} names no object key")
    digest = sha256_file(path)
    _Store(settings).upload(Path(path), bucket, key, digest)
    log.info("uploaded %s -> %s (sha256 %s)", path, url, digest[:12])
    return digest


def object_exists(url: str, settings: S3Settings | None = None) -> bool:
    """Whether `s3://bucket/key` exists (a missing bucket or bad credentials still raise)."""
    bucket, key = parse_s3_url(url)
    return _Store(settings).head_object(bucket, key) is not None


def download_file(url: str, path: str | Path, settings: S3Settings | None = None) -> str:
    """Download `s3://bucket/key` to `path`, verified against its sha256 metadata; returns the
    digest. On any failure `path` is left as it was."""
    bucket, key = parse_s3_url(url)
    store = _Store(settings)
    head = store.head_object(bucket, key)
    if head is None:
        raise StorageError(f"object {url} does not exist at {store.endpoint}")
    digest = store.download(bucket, key, Path(path), head)
    log.info("downloaded %s -> %s", url, path)
    return digest


def delete_file(url: str, settings: S3Settings | None = None) -> None:
    """Delete `s3://bucket/key` (no error when it is already gone)."""
    bucket, key = parse_s3_url(url)
    if not key:
        raise StorageError(f"{url} names no object key")
    store = _Store(settings)
    store.call(lambda: store.s3.delete_object(Bucket=bucket, Key=key), bucket)
    log.info("deleted %s", url)


def delete_prefix(url: str, settings: S3Settings | None = None) -> int:
    """Delete every object under `url/` (a folder, never a whole bucket); returns how many.
    `s3://b/run-1` deletes run-1/... but not run-10/...."""
    bucket, prefix = parse_s3_url(url)
    prefix = prefix.rstrip("/")
    if not prefix:
        raise StorageError(f"refusing to delete everything in bucket {bucket} ({url})")
    store = _Store(settings)
    keys = list(store.list_keys(bucket, f"{prefix}/"))
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
        done = store.call(lambda b=batch: store.s3.delete_objects(Bucket=bucket, Delete=b), bucket)
        if done.get("Errors"):
            first = done["Errors"][0]
            raise StorageError(
                f"could not delete {len(done['Errors'])} objects under {url}, e.g. "
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
            )
    log.info("deleted %d objects under %s", len(keys), url)
    return len(keys)


@dataclass
class SyncResult:
    transferred: list[str] = field(default_factory=list)  # relative paths
    skipped: list[str] = field(default_factory=list)  # already identical (same sha256)


def upload_dir(directory: str | Path, url: str, settings: S3Settings | None = None) -> SyncResult:
    """Upload every file under `directory` to `url/<relative path>`, skipping files whose remote
    copy already has the same sha256."""
    bucket, prefix = parse_s3_url(url)
    root = Path(directory)
    if not root.is_dir():
        raise StorageError(f"not a directory: {root}")
    store, result = _Store(settings), SyncResult()
    store.head_bucket(bucket)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        key, digest = _join(prefix, rel), sha256_file(path)
        head = store.head_object(bucket, key)
        if head is not None and head.get("Metadata", {}).get(SHA256_KEY) == digest:
            result.skipped.append(rel)
            continue
        store.upload(path, bucket, key, digest)
        result.transferred.append(rel)
    log.info(
        "%s -> %s: %d uploaded, %d unchanged",
        root,
        url,
        len(result.transferred),
        len(result.skipped),
    )
    return result


def download_dir(url: str, directory: str | Path, settings: S3Settings | None = None) -> SyncResult:
    """Download every object under `url/` into `directory`, skipping local files that already
    match the object's sha256."""
    bucket, prefix = parse_s3_url(url)
    root = Path(directory)
    store, result = _Store(settings), SyncResult()
    store.head_bucket(bucket)
    list_prefix = f"{prefix}/" if prefix else ""
    for key in store.list_keys(bucket, list_prefix):
        rel = key[len(list_prefix) :]
        parts = PurePosixPath(rel).parts
        if not rel or rel.endswith("/"):  # folder marker objects some tools create
            continue
        if ".." in parts or rel.startswith("/"):
            raise StorageError(f"refusing to write s3://{bucket}/{key} outside {root}")
        target = root.joinpath(*parts)
        head = store.head_object(bucket, key)
        if head is None:  # deleted since the listing
            continue
        expected = head.get("Metadata", {}).get(SHA256_KEY)
        if target.is_file() and expected and sha256_file(target) == expected:
            result.skipped.append(rel)
            continue
        store.download(bucket, key, target, head)
        result.transferred.append(rel)
    log.info(
        "%s -> %s: %d downloaded, %d unchanged",
        url,
        root,
        len(result.transferred),
        len(result.skipped),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m excon.storage {download,upload} SRC DST`: copy a folder from/to S3 (what a
    TrainJob's pods use to fetch their inputs)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m excon.storage", description=main.__doc__)
    p.add_argument("direction", choices=["download", "upload"])
    p.add_argument("source", help="s3://bucket/prefix (download) or a folder (upload)")
    p.add_argument("target", help="a folder (download) or s3://bucket/prefix (upload)")
    args = p.parse_args(argv)
    try:
        if args.direction == "download":
            done = download_dir(args.source, args.target)
        else:
            done = upload_dir(args.source, args.target)
    except StorageError as e:
        print(f"excon.storage: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.source} -> {args.target}: {done.transferred} copied, {done.skipped} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
