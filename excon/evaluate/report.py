"""`excon report`: methods side by side on every headline metric, mean ± std over seeds."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from excon import artifacts
from excon.evaluate import PARTS
from excon.evaluate.plots import bar_plot, line_plot

EVAL_DIR = "eval"
EVAL_METRICS = "metrics.json"

# (key, column title, +1 if higher is better / -1 if lower is better)
HEADLINE: list[tuple[str, str, int]] = [
    ("test/top1", "top-1", +1),  # of the scored classifier (eval.head), named above the table
    ("test/top5", "top-5", +1),
    ("online/top1", "online head top-1", +1),
    ("calib/ece", "ECE", -1),
    ("calib/nll", "NLL", -1),
    ("calib/brier", "Brier", -1),
    ("shift/mean/acc", "shift acc", +1),
    ("shift/mean/ece", "shift ECE", -1),
    ("shift/mean/nll", "shift NLL", -1),
    ("adv/fgsm/eps4/acc", "FGSM-4 acc", +1),
    ("adv/pgd/eps4/acc", "PGD-4 acc", +1),
    ("adv/pgd/eps4/ece", "PGD-4 ECE", -1),
    ("expl/avg_drop", "avg drop", -1),
    ("expl/increase", "increase", +1),
    ("expl/deletion_auc", "deletion AUC", -1),
    ("expl/insertion_auc", "insertion AUC", +1),
    ("expl/pointing_game", "pointing game", +1),
    ("expl/energy_pointing_game", "energy PG", +1),
]
METHOD_ORDER = ("ce", "supcon", "excon")
HEADS = {
    "probe": "the linear probe, selected on val",
    "online": "the head co-trained with the encoder (the reference's)",
}


def load_eval_metrics(run_dir: Path, parts: tuple[str, ...] = PARTS) -> dict:
    """One run's evaluation metrics: the `parts` of eval/<part>/metrics.json merged.

    A missing part is an error naming the command that writes it."""
    merged: dict = {}
    for part in parts:
        path = Path(run_dir) / EVAL_DIR / part / EVAL_METRICS
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; run `excon evaluate --part {part}` for {run_dir} first"
            )
        merged.update(json.loads(path.read_text()))
    return merged


def load_runs(run_dirs: list[Path]) -> list[dict]:
    """Each run's merged evaluation metrics (written by `excon evaluate`)."""
    return [load_eval_metrics(Path(run)) for run in run_dirs]


def summarise(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> key -> (mean, std over seeds (0 for one seed), number of seeds)."""
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, value in row.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and not math.isnan(value) and key != "seed":
                grouped[row["method"]][key].append(float(value))
    order = sorted(grouped, key=lambda m: (*METHOD_ORDER, m).index(m))
    return {
        method: {
            k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in grouped[method].items()
        }
        for method in order
    }


def _cell(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "–"
    mean, std, n = stat
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def markdown_table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """Rows = headline metrics, columns = methods; the best method per row in bold."""
    methods = list(summary)
    seeds = {m: max((s[2] for s in summary[m].values()), default=0) for m in methods}
    header = "| metric | " + " | ".join(f"{m} (n={seeds[m]})" for m in methods) + " |"
    lines = [header, "|---|" + "---|" * len(methods)]
    for key, title, direction in HEADLINE:
        stats = {m: summary[m].get(key) for m in methods}
        present = {m: s[0] for m, s in stats.items() if s is not None}
        if not present:
            continue
        best = max(present, key=lambda m: direction * present[m]) if len(present) > 1 else None
        cells = [f"**{_cell(stats[m])}**" if m == best else _cell(stats[m]) for m in methods]
        arrow = "↑" if direction > 0 else "↓"
        lines.append(f"| {title} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curve(summary: dict, method: str, pattern: str) -> list[tuple[float, float]]:
    points = []
    for key, (mean, _, _) in summary[method].items():
        m = re.fullmatch(pattern, key)
        if m:
            points.append((float(m.group(1)), mean))
    return sorted(points)


def report(run_dirs: list[Path], out_dir: Path) -> dict:
    """Write report.md, report.json and comparison plots to out_dir; return the summary."""
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    summary = summarise(runs)
    table = markdown_table(summary)
    heads = sorted({HEADS[r.get("head", "probe")] for r in runs})
    scored = f"Scored classifier (`eval.head`): {', '.join(heads)}.\n\n"
    artifacts.write_text(
        out_dir / "report.md", "# excon: methods compared\n\n" + scored + table + "\n"
    )
    artifacts.write_json(
        out_dir / "report.json",
        {
            m: {k: {"mean": s[0], "std": s[1], "n": s[2]} for k, s in v.items()}
            for m, v in summary.items()
        },
    )
    headline = {
        m: {title: summary[m][k][0] for k, title, _ in HEADLINE if k in summary[m]} for m in summary
    }
    bar_plot(out_dir / "headline.png", headline, "headline metrics (mean over seeds)")
    for attack in ("fgsm", "pgd"):
        line_plot(
            out_dir / f"robustness_{attack}.png",
            {m: _curve(summary, m, rf"adv/{attack}/eps([\d.]+)/acc") for m in summary},
            "eps (/255)",
            "accuracy",
            f"{attack.upper()} accuracy",
        )
    line_plot(
        out_dir / "shift_ece.png",
        {m: _curve(summary, m, r"shift/sev(\d)/ece") for m in summary},
        "corruption severity",
        "ECE",
        "calibration under distribution shift",
    )
    return summary
