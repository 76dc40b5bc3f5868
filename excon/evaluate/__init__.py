"""Evaluation of trained encoders: accuracy, calibration under shift, robustness, explanations."""

# The evaluation's parts, each its own DAG stage writing <run>/eval/<part>/ (kept here, free of
# heavy imports, so the CLI can offer them as choices).
PARTS = ("calibration", "robustness", "explanations")

# Where each part writes: <run>/eval/<part>/metrics.json (+ per_image.npz, CSVs, PNGs).
EVAL_DIR = "eval"
EVAL_METRICS = "metrics.json"
