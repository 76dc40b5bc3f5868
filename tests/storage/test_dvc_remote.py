"""A DVC S3 remote on the real SeaweedFS server: push, lose everything local, pull it back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def test_dvc_push_pull_round_trip(s3_server, bucket, tmp_path):
    repo, state = tmp_path / "repo", tmp_path / "dvc-state"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_", "GIT_"))} | {
        "DVC_NO_ANALYTICS": "1",
        # Nothing outside tmp: DVC's site cache and global/system config dirs, AWS config.
        "DVC_SITE_CACHE_DIR": str(state / "site"),
        "DVC_GLOBAL_CONFIG_DIR": str(state / "global"),
        "DVC_SYSTEM_CONFIG_DIR": str(state / "system"),
        "AWS_CONFIG_FILE": str(state / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(state / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def dvc(*args: str) -> str:
        return run([sys.executable, "-m", "dvc", *args], repo, env)

    run(["git", "init", "-q"], repo, env)
    dvc("init", "-q")
    dvc("config", "core.site_cache_dir", str(state / "site"))

    data = repo / "data"
    files = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 64, "sub/c.csv": b"x,y\n1,2\n"}
    for rel, content in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(content)
    dvc("add", "-q", "data")

    dvc("remote", "add", "-d", "s3remote", f"s3://{bucket}/dvcstore")
    dvc("remote", "modify", "s3remote", "endpointurl", s3_server.endpoint)
    # Credentials only in .dvc/config.local, which DVC keeps out of git.
    dvc("remote", "modify", "--local", "s3remote", "access_key_id", s3_server.access_key)
    dvc("remote", "modify", "--local", "s3remote", "secret_access_key", s3_server.secret_key)
    assert s3_server.secret_key not in (repo / ".dvc" / "config").read_text()
    dvc("push", "-q")

    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="dvcstore/")
    assert listed["KeyCount"] >= len(files)  # one object per file (+ the .dir manifest)

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    dvc("pull", "-q")
    got = {p.relative_to(data).as_posix(): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert got == files
