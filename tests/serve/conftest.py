"""A tiny registered model in a SQLite MLflow store, and `excon serve` started on it as a real
process on a free loopback port (one per test module that asks for it)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CLASSES = ("airplane", "bird", "cat", "dog", "frog", "ship")
MAX_BATCH = 4


@dataclass(frozen=True)
class Registered:
    tracking_uri: str
    name: str
    uri: str  # models:/<name>@champion
    run_dir: Path


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """An untrained 32 px, 6-class network registered as champion (the gate's first version)."""
    import mlflow

    from excon import registry
    from excon.config import load_config
    from excon.testing import tiny_run

    tmp = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{tmp}/mlflow.db"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("serve-test", artifact_location=(tmp / "artifacts").as_uri())
    metrics = {"test/top1": 0.5, "calib/ece": 0.1, "adv/pgd/eps4/acc": 0.2, "expl/avg_drop": 0.5}
    run = tiny_run(tmp / "run", metrics, seed=7, class_names=CLASSES, size=32)
    cfg = load_config(
        None,
        [
            f"tracking.uri={uri}",
            "tracking.experiment=serve-test",
            "tracking.model_name=excon-serve",
        ],
    )
    try:
        out = registry.register(cfg, run)
    finally:
        mlflow.set_tracking_uri(old)  # other tests in this process keep their store
    assert out["decision"] == "promoted", out
    return Registered(uri, out["name"], f"models:/{out['name']}@champion", run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    name: str
    process: subprocess.Popen
    log: Path

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None
    ) -> tuple[int, bytes, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def post(self, path: str, body: bytes | dict) -> tuple[int, dict]:
        status, raw, _ = self.request("POST", path, body)
        return status, json.loads(raw)


def start_server(reg: Registered, workdir: Path, timeout: float = 120.0) -> Server:
    """`excon serve` as a user runs it, in an empty folder (no params.yaml), ready or failed."""
    port = free_port()
    log = workdir / "server.log"
    cmd = [sys.executable, "-m", "excon.cli", "serve", "--model", reg.uri, "--port", str(port),
           "--max-batch", str(MAX_BATCH), "--set", f"tracking.uri={reg.tracking_uri}"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", reg.name, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"excon serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if server.request("GET", "/v2/health/ready")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"excon serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the HTTP and the browser tests (starting one takes ~15 s on 2 cores)."""
    srv = start_server(registered, tmp_path_factory.mktemp("serve"))
    yield srv
    stop_server(srv)


def png_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
