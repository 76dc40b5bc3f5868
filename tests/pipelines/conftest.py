"""A compiled pipeline package, parsed: (PipelineSpec, PlatformSpec)."""

from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]


def compile_docs(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    out = tmp_path / f"p{len(list(tmp_path.glob('*.yaml')))}.yaml"
    assert main(["compile", "--params", str(ROOT / "params.yaml"), "-o", str(out), *args]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform


@pytest.fixture(name="compile_docs")
def compile_docs_fixture(tmp_path):
    """compile_docs(*cli_args) -> (PipelineSpec, PlatformSpec)."""
    return lambda *args: compile_docs(tmp_path, *args)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    return compile_docs(tmp_path_factory.mktemp("compiled"), "--image", "registry.test/excon:1")
