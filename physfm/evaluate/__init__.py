"""Evaluation of fine-tuned classifiers: metrics, label-efficiency factor, embedding search, the study report."""
