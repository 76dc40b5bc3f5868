"""`excon report`: methods side by side on every metric (mean ± std over seeds, 95 % interval),
each pair's difference with its verdict, and how many of the paper's four claims the run supports.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from excon import artifacts
from excon.evaluate import EVAL_DIR, EVAL_METRICS, PARTS, claims, per_image, uncertainty
from excon.evaluate.plots import MetricPanel, Panel, headline_plot, line_plot

METHOD_ORDER = ("ce", "supcon", "excon")
Summary = dict[str, dict[str, tuple[float, float, int]]]  # method -> key -> (mean, std, seeds)
HEADS = {
    "probe": "the linear probe, selected on val",
    "online": "the head co-trained with the encoder (the reference's)",
}
PROTOCOLS = {
    "heldout": "heldout: models selected on a validation split carved from train, test scored once",
    "reference": (
        "reference (the authors' --validation=0): trained on the whole training split, test "
        "scored after every epoch; rows marked 'selected on test' are chosen on the set they "
        "are scored on, so they are optimistic"
    ),
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


def summarise(rows: list[dict]) -> Summary:
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


def markdown_table(summary: Summary) -> str:
    """Rows = metrics by section, columns = methods (mean ± std over seeds); the best method per
    row in bold. Each method's 95 % interval is in report.json and the headline figure; the
    differences table carries the intervals that decide."""
    methods = list(summary)
    seeds = {m: max((s[2] for s in summary[m].values()), default=0) for m in methods}
    header = "| metric | " + " | ".join(f"{m} (n={seeds[m]})" for m in methods) + " |"
    lines = [header, "|---|" + "---|" * len(methods)]
    section = None
    for row in claims.rows_for({k for m in methods for k in summary[m]}):
        if row.section != section:
            section = row.section
            lines.append(f"| *{claims.SECTIONS[section]}* |" + " |" * len(methods))
        stats = {m: summary[m].get(row.key) for m in methods}
        present = {m: s[0] for m, s in stats.items() if s is not None}
        best = max(present, key=lambda m: row.direction * present[m]) if len(present) > 1 else None
        cells = [f"**{_cell(stats[m])}**" if m == best else _cell(stats[m]) for m in methods]
        arrow = "↑" if row.direction > 0 else "↓"
        lines.append(f"| {row.title} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(found: claims.Intervals, rows: list[claims.Row]) -> str:
    """Rows = metrics, columns = method pairs: a - b [95 % interval] and the verdict for a."""
    pairs = list(found.comparisons)
    if not pairs:
        return ""
    header = "| metric | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |"
    lines = [header, "|---|" + "---|" * len(pairs)]
    for row in rows:
        cells = [_difference(found.comparisons[p].get(row.key)) for p in pairs]
        if any(c != "–" for c in cells):
            arrow = "↑" if row.direction > 0 else "↓"
            lines.append(f"| {row.title} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference(cmp: uncertainty.Comparison | None) -> str:
    if cmp is None or cmp.verdict is None:
        return "–"
    mark = {uncertainty.BETTER: "**better**", uncertainty.WORSE: "*worse*"}
    return f"{cmp.diff:+.4f} [{cmp.low:+.4f}, {cmp.high:+.4f}] {mark.get(cmp.verdict, cmp.verdict)}"


def claim_lines(
    verdicts: dict[str, dict], found: claims.Intervals, rows: list[claims.Row], methods: list[str]
) -> list[str]:
    """The report's first lines: how many of the four claims this run supports, and each one."""
    supported = sum(v["verdict"] == claims.SUPPORTED for v in verdicts.values())
    a, b = claims.CLAIM_PAIR
    if a in methods and b in methods:
        head = (
            f"**This run supports {supported} of the paper's {len(verdicts)} claims** "
            f"({a} − {b}, 95 % paired-bootstrap intervals over the test images"
            f"{_seed_note(found)}):"
        )
    else:
        head = (
            f"**This run tests none of the paper's {len(verdicts)} claims**: they compare ExCon "
            f"with SupCon, and this report has {', '.join(methods)}."
        )
    lines = [head, ""]
    titles = {r.key: r.title for r in rows}
    for v in verdicts.values():
        shown = {k: x for k, x in v["metrics"].items() if x is not None}
        detail = ", ".join(f"{titles[k]} {x}" for k, x in shown.items())
        lines.append(f"- {v['title']}: **{v['verdict']}**" + (f" ({detail})" if detail else ""))
    return lines


def _seed_note(found: claims.Intervals) -> str:
    if not found.seeds:
        return "; no per-image values saved: rerun `excon evaluate`"
    if max(found.seeds.values()) < 2:
        return "; one seed per method: training noise not measured"
    counts = ", ".join(f"{m} {k}" for m, k in found.seeds.items())
    return f", seed-to-seed spread included: seeds {counts}"


def _curve(summary: dict, method: str, pattern: str) -> list[tuple[float, float]]:
    points = []
    for key, (mean, _, _) in summary[method].items():
        m = re.fullmatch(pattern, key)
        if m:
            points.append((float(m.group(1)), mean))
    return sorted(points)


@dataclass(frozen=True)
class Findings:
    """Everything the report writes: values per method, rows, intervals, claims' verdicts."""

    summary: Summary
    rows: list[claims.Row]
    found: claims.Intervals
    verdicts: dict[str, dict]


def report(run_dirs: list[Path], out_dir: Path) -> Summary:
    """Write report.md, report.json and comparison plots to out_dir; return the summary."""
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    summary = summarise(runs)
    rows = claims.rows_for({k for m in summary for k in summary[m]})
    values = [(r["method"], per_image.load(Path(d))) for r, d in zip(runs, run_dirs, strict=True)]
    found = claims.intervals(list(summary), values, rows)
    f = Findings(summary, rows, found, claims.claim_verdicts(found, rows))
    heads = sorted({_head(r) for r in runs})
    protocols = sorted({PROTOCOLS[r.get("protocol", "heldout")] for r in runs})
    artifacts.write_text(out_dir / "report.md", _markdown(f, heads, protocols))
    named = sorted({r.get("protocol", "heldout") for r in runs})
    artifacts.write_json(out_dir / "report.json", {**report_json(f), "protocols": named})
    _plots(out_dir, f)
    return summary


def _head(run: dict) -> str:
    head = HEADS[run.get("head", "probe")]
    if run.get("protocol") == "reference":  # no val split: the probe was selected on test
        head = head.replace("selected on val", "selected on test")
    return head


def _markdown(f: Findings, heads: list[str], protocols: list[str]) -> str:
    parts = [
        "# excon: methods compared",
        "\n".join(claim_lines(f.verdicts, f.found, f.rows, list(f.summary))),
        f"Protocol (`study.protocol`): {'; '.join(protocols)}.",
        f"Scored classifier (`eval.head`): {', '.join(heads)}.",
        "## Values: mean ± std over seeds",
        markdown_table(f.summary),
    ]
    diffs = differences_table(f.found, f.rows)
    if diffs:
        parts += ["## Differences: a − b [95 % interval], verdict for a", METHOD_NOTE, diffs]
    return "\n\n".join(parts) + "\n"


METHOD_NOTE = (
    "Better or worse: the interval excludes 0. Intervals: paired bootstrap over the same test "
    f"images ({uncertainty.N_RESAMPLES} resamples), plus the seed-to-seed spread when a method "
    "has several seeds (excon/evaluate/uncertainty.py). ECE is recomputed on every resample; "
    "binning biases resampled ECE upwards, so its interval can sit above the full-set value."
)


def report_json(f: Findings) -> dict:
    """Values with intervals per method, differences with verdicts per pair, claims (NaN and
    missing intervals become null: write_json keeps it strict)."""
    nan = float("nan")
    methods = {
        m: {
            k: {"mean": s[0], "std": s[1], "n": s[2], "low": nan, "high": nan}
            | _bounds(f.found.estimates.get(k, {}).get(m))
            for k, s in v.items()
        }
        for m, v in f.summary.items()
    }
    comparisons = {
        f"{a}-{b}": {k: asdict(c) for k, c in cmps.items()}
        for (a, b), cmps in f.found.comparisons.items()
    }
    supported = sum(v["verdict"] == claims.SUPPORTED for v in f.verdicts.values())
    return {
        # a list: write_json sorts keys, and the claims read in the paper's order
        "claims": {
            "supported": supported,
            "of": len(f.verdicts),
            "each": [{"name": name, **v} for name, v in f.verdicts.items()],
        },
        "methods": methods,
        "comparisons": comparisons,
        "seeds": f.found.seeds,
    }


def _bounds(est: uncertainty.Estimate | None) -> dict[str, float]:
    return {} if est is None else {"low": est.low, "high": est.high}


def _plots(out_dir: Path, f: Findings) -> None:
    headline_plot(out_dir / "headline.png", headline_panels(f))
    for attack in ("fgsm", "pgd"):
        line_plot(
            out_dir / f"robustness_{attack}.png",
            {m: _curve(f.summary, m, rf"adv/{attack}/eps([\d.]+)/acc") for m in f.summary},
            "eps (/255)",
            "accuracy",
            f"{attack.upper()} accuracy",
        )
    line_plot(
        out_dir / "shift_ece.png",
        {m: _curve(f.summary, m, r"shift/sev(\d)/ece") for m in f.summary},
        "corruption severity",
        "ECE",
        "calibration under corruption shift (extension)",
    )


def headline_panels(f: Findings) -> list[Panel]:
    """One panel per claim; in each, the claim's metrics (PGD, deletion/insertion beside),
    each with every method's value and interval and the ExCon - SupCon verdict."""
    a, b = claims.CLAIM_PAIR
    cmps = f.found.comparisons.get(claims.CLAIM_PAIR, {})
    panels = []
    for claim in claims.CLAIMS:
        metrics = []
        for row in (r for r in f.rows if r.section == claim.section):
            if "/eps0/" in row.key:
                continue  # eps 0 is the clean image: no shift, no attack
            points = {m: _point(f, m, row.key) for m in f.summary}
            cmp = cmps.get(row.key)
            verdict = f"{a} vs {b}: {cmp.verdict}" if cmp and cmp.verdict else ""
            arrow = "↑" if row.direction > 0 else "↓"
            metrics.append(MetricPanel(f"{row.title} {arrow}", points, verdict))
        title = f"{claim.title}: {f.verdicts[claim.name]['verdict']}"
        panels.append(Panel(title, metrics))
    return panels


def _point(f: Findings, method: str, key: str) -> tuple[float, float, float] | None:
    stat = f.summary[method].get(key)
    if stat is None:
        return None
    est = f.found.estimates.get(key, {}).get(method)
    if est is None:
        return (stat[0], math.nan, math.nan)
    return (stat[0], est.low, est.high)
