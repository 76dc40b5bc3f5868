"""report: the methods with all three evaluations, side by side."""

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


def test_reports_the_complete_methods(task, evaluations, output):
    parts = {f"excon_{part}": evaluation for part, (evaluation, _, _) in evaluations.items()}
    out = outputs(output)
    # supcon has one evaluation of three: not reported (the pipeline did not train it fully)
    report.python_func(
        **task("report"),
        **out,
        **parts,
        supcon_calibration=evaluations["calibration"][0],
    )
    table = Path(out["table"].path).read_text()
    summary = Path(out["summary"].path)
    assert table == (summary / "report.md").read_text()
    assert (summary / "report.json").is_file()
    assert "| metric | excon (n=1) |" in table and "supcon" not in table
    top1 = evaluations["calibration"][1].metadata["test/top1"]
    assert f"| top-1 ↑ | {top1:.4f} |" in table
    assert "| PGD-4 acc ↑ |" in table and "| avg drop ↓ |" in table  # all three parts merged
    pngs = sorted(summary.glob("*.png"))
    html = Path(out["plots"].path).read_text()
    assert pngs and html.count("data:image/png;base64,") == len(pngs)


def test_no_complete_method_is_a_clear_error(task, evaluations, output):
    out = outputs(output)
    with pytest.raises(ValueError, match="no method has all three evaluations"):
        report.python_func(
            **task("report"),
            **out,
            excon_calibration=evaluations["calibration"][0],
            excon_robustness=evaluations["robustness"][0],
        )
    assert not Path(out["table"].path).exists()
