"""benchmarks/saliency_precision.py end to end on a tiny run and prepared data: it reads the run
and the test split as the real writers leave them and reports both precisions' decisions."""

import json
import subprocess
import sys
from pathlib import Path

from excon.testing import tiny_run
from tests.conftest import make_prepared

ROOT = Path(__file__).resolve().parents[2]


def test_it_compares_both_precisions_on_the_test_split(tmp_path):
    run = tiny_run(tmp_path / "run", {}, class_names=("a", "b", "c", "d"), size=16)
    data = make_prepared(tmp_path / "blobs", num_classes=4, size=16, channels=3)
    out = tmp_path / "figures.json"
    args = [
        "--run",
        run,
        "--data",
        data,
        "--device",
        "cpu",
        "--batch",
        "4",
        "--images",
        "8",
        "--out",
        out,
    ]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "saliency_precision.py"), *map(str, args)],
        check=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    figures = json.loads(out.read_text())
    assert figures["images"] == 8  # the first 8 test images (of 24), over two batches
    for key in ("accept_rate_fp32", "accept_rate_amp"):
        assert 0.0 <= figures[key] <= 1.0
    assert 0 <= figures["decisions_differing"] <= 8
    assert figures["saliency_mean_abs_diff"] >= 0.0
