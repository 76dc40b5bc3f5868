"""Load test of `excon serve` on loopback: C concurrent clients x M requests each, for the v2
infer route and the v1 explain route; p50/p99 latency, throughput and errors per route.

By default it registers an untrained full-width ResNet-18 (32 px, 100 classes: CIFAR-100's
shape; latency does not depend on the weights) in a throw-away SQLite store and starts
`excon serve` on a free port; `--url URL --name NAME` measures a running server instead.
Bounded: at most `--requests` per client and `--time-limit` seconds per route (requests not
started by then are counted as skipped, not as errors). Each request carries `--batch` 32 px
PNG images; an explain request is one batched Grad-CAM.

    python benchmarks/serve_load.py [--clients 4] [--requests 25] [--batch 4] [--device cpu]

Prints one JSON line per route, then a table. Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def register_model(tmp: Path) -> tuple[str, str]:
    """An untrained ResNet-18 registered as champion in a fresh SQLite store: (store, name)."""
    import mlflow

    from excon import registry
    from excon.config import load_config
    from excon.testing import tiny_run

    store = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(store)
    mlflow.create_experiment("serve-load", artifact_location=(tmp / "artifacts").as_uri())
    metrics = {"test/top1": 0.5, "calib/ece": 0.1, "adv/pgd/eps4/acc": 0.2, "expl/avg_drop": 0.5}
    classes = tuple(f"class{i}" for i in range(100))
    run = tiny_run(tmp / "run", metrics, class_names=classes, size=32, width=1.0)
    overrides = [f"tracking.uri={store}", "tracking.experiment=serve-load",
                 "tracking.model_name=excon-load"]  # fmt: skip
    out = registry.register(load_config(None, overrides), run)
    return store, out["name"]


def start_server(store: str, name: str, device: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "excon.cli", "serve", "--model", f"models:/{name}@champion",
           "--port", str(port), "--device", device, "--set", f"tracking.uri={store}"]  # fmt: skip
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"excon serve exited {proc.returncode}; see {tmp / 'server.log'}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("excon serve not ready after 180 s")


def bodies(name: str, batch: int) -> dict[str, tuple[str, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(batch):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(base64.b64encode(buf.getvalue()).decode())
    infer = {"inputs": [{"name": "image", "shape": [batch], "datatype": "BYTES", "data": images}]}
    explain = {"instances": [{"b64": b} for b in images], "top_k": 5}
    return {
        "infer": (f"/v2/models/{name}/infer", json.dumps(infer).encode()),
        "explain": (f"/v1/models/{name}:explain", json.dumps(explain).encode()),
    }


def client(url: str, path: str, body: bytes, n: int, deadline: float, out: dict) -> None:
    """One client: n requests on one keep-alive connection, each timed end to end."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    headers = {"Content-Type": "application/json"}
    for _ in range(n):
        if time.monotonic() > deadline:
            out["skipped"] += 1
            continue
        start = time.perf_counter()
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except OSError:
            ok = False
            conn.close()
        out["latencies"].append(time.perf_counter() - start)
        out["errors"] += 0 if ok else 1


def measure(url: str, route: str, path: str, body: bytes, args: argparse.Namespace) -> dict:
    client(url, path, body, 2, time.monotonic() + 60, {"latencies": [], "errors": 0, "skipped": 0})
    outs = [{"latencies": [], "errors": 0, "skipped": 0} for _ in range(args.clients)]
    deadline = time.monotonic() + args.time_limit
    threads = [
        threading.Thread(target=client, args=(url, path, body, args.requests, deadline, o))
        for o in outs
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(x for o in outs for x in o["latencies"])
    done = len(lat)
    return {
        "route": route,
        "clients": args.clients,
        "requests": done,
        "batch": args.batch,
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1) if lat else None,
        "requests_per_s": round(done / wall, 2),
        "images_per_s": round(done * args.batch / wall, 1),
        "errors": sum(o["errors"] for o in outs),
        "skipped": sum(o["skipped"] for o in outs),
        "wall_s": round(wall, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (default: start one on an untrained model)")
    p.add_argument("--name", default="excon-load", help="model name in the routes (with --url)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=25, help="per client")
    p.add_argument("--batch", type=int, default=4, help="images per request")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per route")
    p.add_argument("--device", default="cpu")
    p.add_argument("--routes", nargs="+", default=["infer", "explain"])
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, name = None, args.url, args.name
        if url is None:
            store, name = register_model(Path(tmp))
            proc, url = start_server(store, name, args.device, Path(tmp))
        try:
            results = [measure(url, r, *bodies(name, args.batch)[r], args) for r in args.routes]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    for r in results:
        print(json.dumps(r))
    print(f"\n{'route':<8} {'C x M':>7} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>7} {'img/s':>7} {'errors':>6}")  # fmt: skip
    for r in results:
        print(f"{r['route']:<8} {r['clients']:>3} x {r['requests'] // r['clients']:<3} "
              f"{r['batch']:>5} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['requests_per_s']:>7} "
              f"{r['images_per_s']:>7} {r['errors']:>6}")  # fmt: skip
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
