"""Evaluation of trained encoders: accuracy, calibration under shift, robustness, explanations."""
