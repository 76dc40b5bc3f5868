import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_time.py"


def test_step_time_prints_json_and_the_ratio_line():
    args = ["--rounds", "1", "--warmup", "0", "--batch", "4", "--size", "16", "--classes", "5"]
    out = (
        subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--width", "0.0625", "--device", "cpu"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        .stdout.strip()
        .splitlines()
    )
    record = json.loads(out[-2])
    assert set(record["median_s"]) == {"ce", "supcon", "excon_accept", "excon_reject"}
    assert all(v > 0 for v in record["median_s"].values())
    match = re.fullmatch(
        r"excon/supcon step-time ratio: accept (\d+\.\d\d) reject (\d+\.\d\d)", out[-1]
    )
    assert match is not None
    assert float(match.group(1)) == round(record["ratio_accept"], 2)
