"""report: the methods with all three evaluations, side by side."""

import shutil
from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, Markdown

from components.report.component import report


def outputs(output) -> dict:
    return {
        "table": output(Markdown, "table"),
        "summary": output(Artifact, "summary"),
        "plots": output(HTML, "plots"),
    }


def second_seed(evaluation: Artifact, tmp_path: Path) -> Artifact:
    """The same evaluation as if a seed-1 run had produced it (its metadata says so)."""
    copy = shutil.copytree(evaluation.path, tmp_path / f"seed1-{Path(evaluation.path).name}")
    return Artifact(name="evaluation", uri=str(copy), metadata={**evaluation.metadata, "seed": 1})


def test_reports_every_seed_of_the_complete_methods(task, evaluations, output, tmp_path):
    # each part's list holds both seeds, in another order per part: paired by metadata
    parts = {
        f"excon_{part}": [second_seed(ev, tmp_path), ev] if part == "robustness" else
        [ev, second_seed(ev, tmp_path)]
        for part, (ev, _, _) in evaluations.items()
    }  # fmt: skip
    out = outputs(output)
    # supcon has one evaluation of three: not reported (the pipeline did not train it fully)
    report.python_func(
        **task("report"),
        **out,
        **parts,
        supcon_calibration=[evaluations["calibration"][0]],
    )
    table = Path(out["table"].path).read_text()
    summary = Path(out["summary"].path)
    assert table == (summary / "report.md").read_text()
    assert (summary / "report.json").is_file()
    assert "| metric | excon (n=2) |" in table and "supcon" not in table
    top1 = evaluations["calibration"][1].metadata["test/top1"]
    assert f"| top-1 ↑ | {top1:.4f} ± 0.0000 |" in table
    assert "| PGD-4 acc ↑ |" in table and "| avg drop ↓ |" in table  # all three parts merged
    pngs = sorted(summary.glob("*.png"))
    html = Path(out["plots"].path).read_text()
    assert pngs and html.count("data:image/png;base64,") == len(pngs)


def test_parts_of_different_seeds_are_refused(task, evaluations, output, tmp_path):
    lists = {f"excon_{part}": [ev] for part, (ev, _, _) in evaluations.items()}
    lists["excon_robustness"] = [second_seed(evaluations["robustness"][0], tmp_path)]
    with pytest.raises(ValueError, match="different seeds"):
        report.python_func(**task("report"), **outputs(output), **lists)


def test_no_complete_method_is_a_clear_error(task, evaluations, output):
    out = outputs(output)
    with pytest.raises(ValueError, match="no method has all three evaluations"):
        report.python_func(
            **task("report"),
            **out,
            excon_calibration=[evaluations["calibration"][0]],
            excon_robustness=[evaluations["robustness"][0]],
        )
    assert not Path(out["table"].path).exists()
