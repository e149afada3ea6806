"""Supervised and zero-label baselines of the label-efficiency study (no pretraining)."""
