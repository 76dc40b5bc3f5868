"""requirements.lock (`make lock`: uv pip compile for the image's platform, with hashes) agrees
with pyproject.toml: every exact pin of pyproject is in the lock at the same version, every
locked package carries its hashes, and the Makefile installs under the lock's versions. A pin
edited in pyproject.toml without `make lock` fails here."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
ENTRY = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})*)", re.M
)


def locked(text: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every `name==version --hash=...` entry."""
    found: dict[str, tuple[str, int]] = {}
    for name, version, hashes in ENTRY.findall(text):
        key = canonicalize_name(name)
        assert key not in found, f"{name} is locked twice"
        found[key] = (version, hashes.count("--hash="))
    return found


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"pyproject.toml: {line} is not an exact pin"
        out[canonicalize_name(req.name)] = spec.version
    return out


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, int]]:
    return locked(LOCK.read_text())


def test_every_pin_of_pyproject_is_locked_at_its_version(lock):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins(project["dependencies"])
    for name, version in runtime.items():
        assert name in lock, f"{name}=={version} (pyproject.toml) is not in requirements.lock"
        assert lock[name][0] == version, f"{name}: pyproject {version}, lock {lock[name][0]}"
    # dev tools are not in the image; where one is also a runtime dependency, it agrees
    for name, version in pins(project["optional-dependencies"]["dev"]).items():
        if name in lock:
            assert lock[name][0] == version, (
                f"{name}: pyproject [dev] {version}, lock {lock[name][0]}"
            )


def test_every_locked_package_is_exact_and_hashed(lock):
    text = LOCK.read_text()
    entries = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(entries) == len(lock) > 100  # every transitive dependency, each parsed above
    assert all(hashes >= 1 for _, hashes in lock.values()), "a locked package without a hash"
    # the CUDA libraries torch loads come from the lock, not from the base image
    assert {"torch", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "triton"} <= lock.keys()
    # installed without dependencies, as the Makefile does (its tensorflow is never imported)
    makefile = (ROOT / "Makefile").read_text()
    assert f"animal-mnist=={lock['animal-mnist'][0]}" in makefile
    assert "tensorflow" not in lock


def test_the_comparison_can_fail(lock):
    bumped = LOCK.read_text().replace("\ntorch==2.14.1 \\", "\ntorch==2.14.2 \\", 1)
    assert locked(bumped)["torch"][0] == "2.14.2" != lock["torch"][0]
    unhashed = re.sub(r"(\ncaptum==\S+) \\\n(\s+--hash=\S+\s*\\?\n)+", r"\1\n", LOCK.read_text())
    assert locked(unhashed)["captum"][1] == 0


def test_the_makefile_installs_under_the_lock_without_its_hashes(tmp_path):
    """pip turns a hash in a constraints file into --require-hashes for everything (the dev
    extras have none): the Makefile strips them. Its own sed, run here, leaves a valid file."""
    makefile = (ROOT / "Makefile").read_text()
    (recipe,) = [line.strip() for line in makefile.splitlines() if line.strip().startswith("sed ")]
    assert "-c $(CONSTRAINTS) -e '.[dev]'" in makefile
    command = recipe.replace("$$", "$").replace("$(CONSTRAINTS)", str(tmp_path / "c.txt"))
    subprocess.run(command, shell=True, cwd=ROOT, check=True)
    constraints = (tmp_path / "c.txt").read_text()
    assert "--hash" not in constraints and "\\" not in constraints
    lines = [line for line in constraints.splitlines() if line and not line.startswith((" ", "#"))]
    assert {canonicalize_name(Requirement(line).name) for line in lines} == set(
        locked(LOCK.read_text())
    )
