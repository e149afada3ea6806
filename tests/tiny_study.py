"""A tiny label-efficiency study run through the ``physfm`` CLI with MLflow on (shared by tests).

It uses a randomly initialised 1-layer backbone saved with ``save_backbone`` (no pretraining: the
point is the machinery, not the physics) and is built once per test session.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LABELS = ("8", "40")
MODES = ("scratch", "finetune", "frozen")
SEEDS = (1,)
_CACHE: dict[str, Path] = {}


#: fine-tuning settings of the tiny grid (the pre-issue-12 CLI defaults where the grid did not set them)
FT_CONFIG = json.dumps(
    {"max_steps": 24, "eval_every": 4, "patience": 3, "batch_size": 16, "head": {"hidden": 16}, "lr": 1e-3,
     "backbone_lr_scale": 0.1}
)  # fmt: skip


@contextlib.contextmanager
def tracking_env(results: Path, experiment: str) -> Iterator[None]:
    """PHYSFM_TRACKING on, logging to ``results/mlflow.db`` in ``experiment``; restored afterwards."""
    keys = ("PHYSFM_TRACKING", "PHYSFM_RESULTS", "PHYSFM_EXPERIMENT", "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"PHYSFM_TRACKING": "1", "PHYSFM_RESULTS": str(results), "PHYSFM_EXPERIMENT": experiment})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_tiny_backbone(data_dir: Path, out: Path, seed: int = 0, **config: Any) -> Path:
    """A randomly initialised small backbone with the data's normalisation, saved as pretraining would."""
    import torch

    from physfm.data.loader import load_arrays
    from physfm.data.shards import load_manifest
    from physfm.features import JET_DEFAULT
    from physfm.finetune.train import fit_norm
    from physfm.models.backbone import Backbone, BackboneConfig
    from physfm.pretrain.checkpoints import save_backbone

    features = list(JET_DEFAULT)
    cfg = {"n_features": len(features), "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 48, **config}
    torch.manual_seed(seed)
    model = Backbone(BackboneConfig(**cfg))
    arrays = load_arrays(data_dir, "train", features=features, max_len=cfg["max_len"])
    meta = {
        "features": features,
        "norm": fit_norm(arrays["x"], arrays["mask"]),
        "max_len": cfg["max_len"],
        "data_version": load_manifest(data_dir)["data_version"],
        "tokenizer_version": "none",
        "objective": "random",
    }
    save_backbone(model, meta, out)
    return out


def run_tiny_study(root: Path, data_dir: Path) -> Path:
    """subsets -> finetune grid (nested under a parent run) -> evaluate -> embed/search -> report.

    Runs once per ``data_dir`` and process; later calls return the first study's directory.
    """
    if str(data_dir) in _CACHE:
        return _CACHE[str(data_dir)]
    from physfm.cli import main

    root.mkdir(parents=True, exist_ok=True)
    backbone = save_tiny_backbone(data_dir, root / "backbone")
    with tracking_env(root / "results", "tiny"):

        def cli(*args: str) -> None:
            assert main([str(a) for a in args]) == 0, args

        cli("study-run", "--out", root / "study_run.json", "--run-name", "study tiny", "--tag", "study=tiny")
        cli(
            "subsets",
            "--data",
            data_dir,
            "--labels",
            ",".join(LABELS),
            "--seeds",
            ",".join(map(str, SEEDS)),
            "--out",
            root / "subsets",
        )
        results = []
        for labels in LABELS:
            for mode in MODES:
                for seed in SEEDS:
                    cell = root / "grid" / f"n{labels}" / mode / f"seed{seed}"
                    cli(
                        "finetune", "--data", data_dir, "--backbone", backbone, "--mode", mode, "--labels", labels,
                        "--seed", seed, "--subsets", root / "subsets", "--out", cell / "model", "--config", FT_CONFIG,
                        "--threads", 1,
                        "--no-progress", "--parent-run-file", root / "study_run.json",
                        "--tag", "study=tiny", "--tag", f"wildcard.mode={mode}",
                    )  # fmt: skip
                    cli("evaluate", "--model", cell / "model", "--data", data_dir, "--out", cell / "test.json",
                        "--config", '{"bootstrap": 20}', "--threads", 1)  # fmt: skip
                    results.append(cell / "test.json")
        for init, extra in (("pretrained", []), ("random", ["--random-init", "5"])):
            cli("embed", "--backbone", backbone, "--data", data_dir, "--split", "train,test",
                "--config", '{"index": "flat", "k": 5}', "--name", init, "--out", root / "embed" / init, "--threads", 1,
                "--parent-run-file", root / "study_run.json", *extra)  # fmt: skip
        cli(
            "report", "--results", *results, "--out", root / "report" / "report.html",
            "--knn", root / "embed/pretrained/knn.json", root / "embed/random/knn.json",
            "--pretrain", f"tiny={backbone}", "--subsets", root / "subsets", "--config", '{"bootstrap": 50}',
            "--parent-run-file", root / "study_run.json",
        )  # fmt: skip
    _CACHE[str(data_dir)] = root
    return root


def simulated_icecube(root: Path, n_events: int, seed: int, shard_events: int) -> Path:
    """``n_events`` simulated IceCube-86 events (``physfm generate icecube``) under ``root``, converted to
    shards of ``shard_events``; returns the dataset directory."""
    from physfm.data.convert import convert
    from physfm.data.generate_icecube import generate_icecube

    generate_icecube(root / "raw", n_events, seed=seed, workers=1, progress=False)
    convert("kaggle", root / "raw", root / "data", shard_events=shard_events, progress=False)
    return root / "data"
