"""Scoring a CWoLa classifier (physfm/finetune/cwola.py) on its truth-labelled evaluation set: the significance
improvement characteristic SIC = TPR / sqrt(FPR) (docs/anomaly.md).

The classifier is trained per jet (SR vs SB); an event's anomaly score is the mean over its two jets of the
log-odds log p(SR) - log p(SB). SIC is read off the event-level ROC curve: its maximum over the cuts with
FPR > ``fpr_min`` (1e-4; on an evaluation set of N background events the smallest nonzero FPR is 1/N, so with a few
thousand events the maximum is resolved at FPR >= 1/N), and at FPR = ``fpr_at`` (1 %, linear interpolation of TPR
in FPR between the cuts around it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from physfm.data.dataset import open_dataset
from physfm.data.loader import read_block
from physfm.data.shards import EventBlock
from physfm.evaluate.metrics import roc_auc, roc_curve

FPR_MIN = 1e-4  #: the max SIC is taken over cuts with FPR above this
FPR_AT = 0.01  #: the fixed working point of the second SIC


def sic_metrics(scores: np.ndarray, truth: np.ndarray, fpr_min: float = FPR_MIN, fpr_at: float = FPR_AT) -> dict:
    """``max_sic`` (over FPR > fpr_min), ``sic_at_1pct`` (TPR(fpr_at) / sqrt(fpr_at)), ``auc``, and the FPR of the
    max, for signal ``truth == 1`` and higher ``scores`` more signal-like."""
    positive = np.asarray(truth) == 1
    tpr, fpr, _ = roc_curve(scores, positive)
    ok = fpr > fpr_min
    sic = np.where(ok, tpr / np.sqrt(np.where(ok, fpr, 1.0)), -np.inf)
    best = int(np.argmax(sic))
    tpr_at = float(np.interp(fpr_at, fpr, tpr))  # fpr is non-decreasing along the curve
    return {
        "max_sic": float(sic[best]) if np.isfinite(sic[best]) else float("nan"),
        "max_sic_fpr": float(fpr[best]),
        "sic_at_1pct": tpr_at / np.sqrt(fpr_at),
        "auc": roc_auc(scores, positive),
    }


def event_scores(logits: np.ndarray, events: np.ndarray, names: list[str], labels: np.ndarray) -> tuple:
    """``(scores, truth)`` per event: the mean over its jets of the SR-vs-SB log-odds; events by (truth, event_id)."""
    z = np.asarray(logits, dtype=np.float64)
    log_odds = z[:, 1] - z[:, 0]
    key = events[:, names.index("event_id")].astype(np.int64) * 2 + labels.astype(np.int64)
    keys, inverse = np.unique(key, return_inverse=True)
    scores = np.bincount(inverse, weights=log_odds) / np.bincount(inverse)
    return scores, keys % 2


def evaluate_cwola(model_dir: str | Path, data_dir: str | Path, threads: int = 1) -> dict[str, Any]:
    """The CWoLa record of one model on its prepared set's test split: SIC metrics, the cell and the set's counts."""
    import torch

    from physfm.evaluate.evaluate import predict

    torch.set_num_threads(threads)
    ds = open_dataset(data_dir, verify=True)
    logits, kept, _, meta = predict(model_dir, ds, "test")
    test = EventBlock.concat([read_block(path) for path, _ in ds.shards("test")])
    if not np.array_equal(test.event_key, kept["event_key"]):
        raise RuntimeError("the model's test outputs are not in the order of the test shards")
    scores, truth = event_scores(logits, test.events, ds.feature_names("event"), test.label)
    cw = ds.manifest["cwola"]
    return {
        "mode": meta["mode"],
        "seed": meta["seed"],
        "s_over_b": cw["s_over_b"],
        "n_labels": meta["n_labels"],
        "backbone_objective": meta["backbone"].get("objective"),
        "data_version": ds.data_version,
        "counts": {k: cw[k] for k in ("n_bkg_sr", "n_bkg_sb", "n_sig_sr", "n_sig_sb", "n_eval_bkg", "n_eval_sig")},
        "train": meta["train"],
        "metrics": sic_metrics(scores, truth),
        "model_dir": str(model_dir),
    }
