"""Evaluation: scores and classical baselines, reports, the per-step diagnostic, validation."""
