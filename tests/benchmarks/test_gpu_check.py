"""benchmarks/gpu_check.sh cannot run here (no GPU), so check what can be: bash accepts it and
every benchmark it calls exists and accepts each flag it passes."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_bash_parses_it():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_benchmark_call_uses_real_flags():
    text = SCRIPT.read_text().replace("\\\n", " ")
    calls = re.findall(r"(benchmarks/\w+\.py)([^|\n]*)", text)
    assert {c[0] for c in calls} == {
        "benchmarks/train_throughput.py",
        "benchmarks/step_time.py",
        "benchmarks/saliency_precision.py",
    }
    for script, args in calls:
        help_text = subprocess.run(
            [sys.executable, str(ROOT / script), "--help"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout  # fmt: skip
        for flag in re.findall(r"--[\w-]+", args):
            assert flag in help_text, f"{script} has no {flag}"
