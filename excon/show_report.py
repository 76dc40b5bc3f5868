"""`python -m excon.show_report`: print the study's report and where to look next."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from excon.config import load_config


def main() -> int:
    cfg = load_config("params.yaml" if Path("params.yaml").is_file() else None)
    report = Path(cfg.train.runs_dir) / cfg.data.dataset / "report" / "report.md"
    if not report.is_file():
        print(f"{report}: no report yet; run `make run` (dvc repro)", file=sys.stderr)
        return 1
    print(report.read_text())
    print("\n".join(verdict_lines(report.parent / "report.json")))
    print(f"report and plots: {report.parent}/")
    print("per-epoch and final metrics: dvc metrics show; curves: dvc plots show")
    if cfg.tracking.enabled:
        print("runs and models: mlflow ui --backend-store-uri sqlite:///mlflow.db")
    return 0


def verdict_lines(path: Path) -> list[str]:
    """The claims' verdicts again, last, where a terminal leaves them in view after the tables."""
    found = json.loads(path.read_text()).get("claims") if path.is_file() else None
    if not found:
        return []
    lines = [f"The paper's claims: {found['supported']} of {found['of']} supported by this run"]
    lines += [f"  {c['title']}: {c['verdict']}" for c in found["each"]]
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
