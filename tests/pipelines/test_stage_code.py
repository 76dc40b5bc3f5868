"""dvc.yaml's code deps are the files each stage runs (an import walk from its entry points, in
pipelines/stage_code.py), and the KFP `code_version` of a task changes exactly with them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines import dag, stage_code
from pipelines.stage_code import CLI, STAGE_FUNCTIONS, STAGES, code_version, stage_files

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `python -m pipelines.stage_code` for each stage's files and paste them into dvc.yaml"


def _report(diffs: dict[str, list[str]], what: str) -> str:
    lines = [f"  {stage}: {' '.join(paths)}" for stage, paths in diffs.items() if paths]
    return f"dvc.yaml {what}:\n" + "\n".join(lines) + f"\n({FIX})"


# --- dvc.yaml against the walk ----------------------------------------------------------------


def test_every_dvc_stage_has_entry_points():
    assert {stage_code.base_stage(n) for n in stage_code.dvc_code_deps()} == set(STAGES)


def test_dvc_lists_every_file_a_stage_runs():
    """Editing any file a stage runs must rerun it: no file may be missing from its deps."""
    missing = {name: diff.missing for name, diff in stage_code.check_dvc().items()}
    if any(missing.values()):  # pytest.fail: the message alone, without a dict dump
        pytest.fail(_report(missing, "misses files these stages run"), pytrace=False)


def test_dvc_lists_no_file_a_stage_does_not_run():
    """Over-listing reruns a stage for nothing (and hides what it really runs)."""
    extra = {name: diff.extra for name, diff in stage_code.check_dvc().items()}
    if any(extra.values()):
        pytest.fail(_report(extra, "lists files these stages do not run"), pytrace=False)


def test_the_comparison_fails_on_a_dropped_or_stale_dep():
    files = stage_files("pretrain")
    listed = [f for f in files if f != "excon/seeds.py"]
    assert stage_code.compare_deps(listed, files).missing == ["excon/seeds.py"]
    stale = stage_code.compare_deps([*files, "excon/registry.py", "excon/gone.py"], files)
    assert stale.extra == ["excon/gone.py", "excon/registry.py"]
    assert stale.missing == []


def test_a_listed_folder_covers_every_file_under_it():
    files = stage_files("prepare")
    sources = [f for f in files if f.startswith("excon/data/sources/")]
    assert sources, "prepare reads the dataset sources"
    listed = [f for f in files if f not in sources] + ["excon/data/sources"]
    assert stage_code.compare_deps(listed, files) == stage_code.DepsDiff([], [])
    # A folder covering a file the stage does not run over-lists that file.
    diff = stage_code.compare_deps([*files, "excon/evaluate"], files)
    assert "excon/evaluate/stage.py" in diff.extra


# --- what the walk finds in excon -------------------------------------------------------------


def test_pretrain_runs_the_training_code():
    files = stage_files("pretrain")
    for f in ("excon/train.py", "excon/seeds.py", "excon/distributed.py"):
        assert f in files
    # imported inside train.py's loader function: a function-level import counts
    assert "excon/data/device_views.py" in files
    assert "excon/registry.py" not in files
    # The one evaluate file pretrain runs: cli.py imports PARTS from excon/evaluate/__init__.py at
    # module level (for --part's choices). Nothing else under excon/evaluate/ is imported.
    assert [f for f in files if f.startswith("excon/evaluate/")] == ["excon/evaluate/__init__.py"]


def test_evaluate_stages_run_the_evaluation():
    for name in ("evaluate_calibration", "evaluate_robustness", "evaluate_explanations"):
        files = stage_files(name)
        assert "excon/evaluate/stage.py" in files
        assert f"excon/evaluate/{STAGES[name].part}.py" in files


def test_register_runs_the_registry():
    files = stage_files("register")
    assert {"excon/registry.py", "excon/tracking.py"} <= set(files)


def test_every_file_is_executed_by_the_package():
    for name in STAGES:
        files = stage_files(name)
        assert {CLI, STAGE_FUNCTIONS, "excon/__init__.py", "excon/config.py"} <= set(files)
        assert all(f.startswith("excon/") and f.endswith(".py") for f in files)


def test_entry_points_are_what_the_cli_runs():
    """Each stage's excon/stages.py function is reached from its CLI command alone, and the
    evaluate parts are the pipeline's."""
    for name, spec in STAGES.items():
        reached = stage_code.walk([("func", CLI, spec.command)], ROOT)
        assert ("func", STAGE_FUNCTIONS, spec.function) in reached, name
    parts = {s.part for s in STAGES.values() if s.part}
    assert parts == set(dag.PARTS)
    assert {f"evaluate_{p}" for p in parts} <= set(STAGES)


def test_a_renamed_entry_point_is_a_clear_error(tmp_path):
    shutil.copytree(ROOT / "excon", tmp_path / "excon")
    cli = tmp_path / CLI
    cli.write_text(cli.read_text().replace("def cmd_probe(", "def cmd_fit_probe("))
    with pytest.raises(LookupError, match=r"cmd_probe.*STAGES"):
        stage_files("probe", tmp_path)


# --- the walk's rules, on a small package ------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_walk_rules(tmp_path):
    root = _package(
        tmp_path,
        {
            "excon/__init__.py": "",
            "excon/config.py": "",
            "excon/cli.py": """
                from excon import stages
                from excon.config import X

                def helper():
                    from excon import helped

                def cmd_prepare(args):
                    from excon import only_prepare
                    helper()
                    stages.prepare()

                def cmd_pretrain(args):
                    from excon import only_pretrain
            """,
            "excon/stages.py": """
                def prepare():
                    from excon.pkg.sub import thing

                def pretrain():
                    from excon import only_pretrain
            """,
            "excon/helped.py": "",
            "excon/only_prepare.py": "",
            "excon/only_pretrain.py": "",
            "excon/pkg/__init__.py": "from . import init_dep\n",
            "excon/pkg/init_dep.py": "",
            "excon/pkg/sub.py": """
                from .rel import y

                def lazy():
                    from excon.pkg import lazy_dep
            """,
            "excon/pkg/rel.py": "",
            "excon/pkg/lazy_dep.py": "",
            "excon/unused.py": "",
        },
    )
    assert stage_files("prepare", root) == [
        "excon/__init__.py",
        "excon/cli.py",
        "excon/config.py",
        "excon/helped.py",  # a same-module function the command calls
        "excon/only_prepare.py",
        "excon/pkg/__init__.py",  # importing excon.pkg.sub runs the package first
        "excon/pkg/init_dep.py",
        "excon/pkg/lazy_dep.py",  # imported inside a function of a non-entry module
        "excon/pkg/rel.py",  # a relative import
        "excon/pkg/sub.py",
        "excon/stages.py",
    ]
    assert "excon/only_prepare.py" not in stage_files("pretrain", root)
    assert stage_code.why("prepare", "excon/pkg/rel.py", root) == [
        "excon/stages.py:prepare",
        "excon/pkg/sub.py",
        "excon/pkg/rel.py",
    ]


def test_no_torch_needed():
    """The walk reads source text: importing and running it loads none of the analysed modules."""
    code = (
        "import sys; from pipelines.stage_code import stage_files; stage_files('pretrain'); "
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('excon')]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- code_version ------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the excon sources to edit."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "excon", tmp_path / "excon", ignore=skip)
    return tmp_path


def _touch(root: Path, rel: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + "\n# edited\n")


# Others may edit the working tree while these run: each compares versions within its own copy.


def test_code_version_hashes_the_stage_files(tree):
    assert len({code_version(s, tree) for s in ("prepare", "pretrain", "register")}) == 3
    # the three evaluate stages run the same files (see STAGES)
    assert code_version("evaluate_robustness", tree) == code_version("evaluate_calibration", tree)


def test_code_version_follows_the_stage_files(tree):
    before = {name: code_version(name, tree) for name in STAGES}
    _touch(tree, "excon/seeds.py")  # in pretrain's set, not in report's
    after = {name: code_version(name, tree) for name in STAGES}
    assert after["pretrain"] != before["pretrain"]
    assert after["report"] == before["report"]


def test_an_evaluation_change_reruns_evaluation_not_pretrain(tree):
    before = {name: code_version(name, tree) for name in STAGES}
    _touch(tree, "excon/evaluate/stage.py")
    after = {name: code_version(name, tree) for name in STAGES}
    changed = {name for name in STAGES if after[name] != before[name]}
    assert changed == {"evaluate_calibration", "evaluate_robustness", "evaluate_explanations"}


def test_a_file_outside_the_set_changes_nothing(tree):
    before = {name: code_version(name, tree) for name in ("pretrain", "register")}
    _touch(tree, "excon/registry.py")
    (tree / "excon" / "new_module.py").write_text("x = 1\n")
    assert code_version("pretrain", tree) == before["pretrain"]
    assert code_version("register", tree) != before["register"]


# --- command line ------------------------------------------------------------------------------


def test_command_prints_files_and_differences(capsys):
    assert stage_code.main(["--stage", "register"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("register (code_version ")
    assert "  - excon/registry.py\n" in out
    assert stage_code.main(["--stage", "pretrain", "--why", "excon/seeds.py"]) == 0
    chain = capsys.readouterr().out.strip().split(" -> ")
    assert chain[0] in {"excon/cli.py:cmd_pretrain", "excon/stages.py:pretrain"}
    assert chain[-1] == "excon/seeds.py"
