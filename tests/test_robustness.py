"""Robustness (issue 8): killed stages, wrong parquet column types, corrupt inputs refused downstream.

Conversion, truncated/odd ROOT files, bad events, duplicates, a flipped byte and a killed ``convert``
are in test_convert.py; concurrent tracking in test_tracking.py; pickles and resume in test_pretrain.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from physfm.data.convert import convert
from physfm.data.shards import DataError, load_manifest
from physfm.io import read_json, sha256_file

PROMETHEUS = Path(__file__).parent / "data" / "graphnet" / "examples" / "parquet" / "prometheus" / "merged"
ENV = {**os.environ, "PHYSFM_TRACKING": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY_ARCH = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _physfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "physfm.cli", *args]


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _kill_when(cmd: list[str], ready: Callable[[], bool], delay: float, timeout: float = 180) -> None:
    """Start ``cmd`` in its own process group; SIGKILL it ``delay`` s after ``ready()`` first holds."""
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"{cmd[3:5]} ended (rc {proc.returncode}) before the kill point"
        assert time.time() < deadline, "the kill point was never reached"
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the stage finished before it could be killed; the test proves nothing"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


# --------------------------------------------------------------------------- killed stages
def test_killed_tokenizer_fit_leaves_nothing_complete_and_rerun_matches(jet_dataset: Path, tmp_path: Path) -> None:
    from physfm.tokenizers import load_tokenizer

    def fit(out: Path) -> list[str]:
        args = [
            "--method",
            "kmeans",
            "-k",
            "16",
            "--config",
            '{"seed": 3, "eval": {"max_events": 200}}',
            "--no-progress",
        ]
        return _physfm("tokenizer", "fit", "--data", str(jet_dataset), "--out", str(out), *args)

    out = tmp_path / "tok"
    building = lambda: any(tmp_path.glob(".tok.*.partial"))  # noqa: E731  (the artefact is being written)
    _kill_when(fit(out), building, delay=random.Random(8).uniform(0.0, 1.0))
    assert not out.exists(), "a killed fit must not leave a tokenizer directory"
    with pytest.raises(DataError, match="no such tokenizer directory.*physfm tokenizer fit"):
        load_tokenizer(out)
    subprocess.run(fit(out), env=ENV, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(fit(tmp_path / "ref"), env=ENV, check=True, stdout=subprocess.DEVNULL)
    assert load_tokenizer(out).version == load_tokenizer(tmp_path / "ref").version
    assert sha256_file(out / "weights.safetensors") == sha256_file(tmp_path / "ref" / "weights.safetensors")
    assert read_json(out / "metrics.json")["utilisation"] == read_json(tmp_path / "ref" / "metrics.json")["utilisation"]


@pytest.mark.slow  # three finetune processes of a few seconds each
def test_killed_finetune_leaves_nothing_complete_and_rerun_matches(jet_dataset: Path, tmp_path: Path) -> None:
    from physfm.finetune.model import load_model

    def run(out: Path) -> list[str]:
        config = '{"max_steps": 400, "eval_every": 20, "batch_size": 32, "lr": 0.001, "patience": 10}'
        args = ["--mode", "scratch", "--labels", "200", "--seed", "3", "--config", config]
        arch = ",".join(f"{k}={v}" for k, v in TINY_ARCH.items())
        opts = ["--arch", arch, "--device", "cpu", "--threads", "1", "--no-progress"]
        return _physfm("finetune", "--data", str(jet_dataset), "--out", str(out), *args, *opts)

    out = tmp_path / "ft"
    training = lambda: (tmp_path / "ft.subsets" / "manifest.json").is_file()  # noqa: E731
    _kill_when(run(out), training, delay=random.Random(9).uniform(0.0, 2.0))
    assert not out.exists(), "a killed finetune must not leave a classifier directory"
    with pytest.raises(DataError, match="no such finetuned directory.*physfm finetune"):
        load_model(out)
    subprocess.run(run(out), env=ENV, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(run(tmp_path / "ref"), env=ENV, check=True, stdout=subprocess.DEVNULL)
    a, b = load_file(str(out / "classifier.safetensors")), load_file(str(tmp_path / "ref" / "classifier.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ma, mb = read_json(out / "classifier.json")["train"], read_json(tmp_path / "ref" / "classifier.json")["train"]
    assert ma["steps"] == mb["steps"] and ma["best_step"] == mb["best_step"]
    assert ma["best_val_loss"] == pytest.approx(mb["best_val_loss"], abs=1e-6)


PRETRAIN = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.1},  # dropout: resume must restore the RNG
    "max_len": 32,
    "batch_size": 16,
    "steps": 300,
    "warmup_steps": 2,
    "val_every": 50,
    "log_every": 10,
    "checkpoint_every": 10,
    "norm_events": 200,
    "seed": 5,
}


def _pretrain_cmd(data: Path, tok: Path, out: Path, *extra: str) -> list[str]:
    args = ["--data", str(data), "--tokenizer", str(tok), "--out", str(out), "--config", json.dumps(PRETRAIN)]
    return _physfm("pretrain", *args, "--device", "cpu", "--threads", "1", "--no-progress", *extra)


@pytest.fixture(scope="module")
def pretrained_ref(jet_dataset: Path, tokenizer8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted `physfm pretrain` run of :data:`PRETRAIN`."""
    out = tmp_path_factory.mktemp("pretrain") / "ref"
    subprocess.run(_pretrain_cmd(jet_dataset, tokenizer8, out), env=ENV, check=True, stdout=subprocess.DEVNULL)
    return out


@pytest.mark.slow  # two pretrain processes of ~10 s each, plus the reference run (once)
@pytest.mark.parametrize("when", ["training", "writing"])
def test_killed_pretrain_leaves_nothing_complete_and_rerun_matches(
    when: str, jet_dataset: Path, tokenizer8: Path, pretrained_ref: Path, tmp_path: Path
) -> None:
    """SIGKILL while training (checkpoints in OUT/checkpoints, the CLI default) or while the backbone
    directory is being written (checkpoints elsewhere, as in the workflow); the rerun resumes."""
    from physfm.pretrain.checkpoints import checkpoint_info, load_backbone, load_checkpoint

    out = tmp_path / "bb"
    ckpt = out / "checkpoints" if when == "training" else tmp_path / "ckpt"
    cmd = _pretrain_cmd(jet_dataset, tokenizer8, out, *(["--checkpoint-dir", str(ckpt)] if when == "writing" else []))
    if when == "training":  # at a random moment after the first checkpoint (step 10 of 300)
        ready, delay = (lambda: checkpoint_info(ckpt) is not None), random.Random(10).uniform(0.0, 2.5)
    else:  # while the finished run builds its backbone directory
        ready, delay = (lambda: any(tmp_path.glob(".bb.*.partial"))), random.Random(11).uniform(0.0, 0.15)
    _kill_when(cmd, ready, delay)
    assert not (out / "backbone.safetensors").exists() and not (out / "manifest.json").exists()
    if when == "training":
        assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
        with pytest.raises(DataError, match="not a complete backbone: manifest.json is missing.*physfm pretrain"):
            load_backbone(out)
    else:
        assert not out.exists(), "a killed pretrain must not leave a backbone directory"
        assert any(tmp_path.glob(".bb.*.partial")), "the kill should have interrupted the write"
        with pytest.raises(DataError, match="no such backbone directory"):
            load_backbone(out)
    # the step resume reads is the checkpoint's own: a kill between last.pt's rename and last.json's write
    # leaves last.json one checkpoint behind (save_checkpoint's contract), so it cannot be the reference
    step = int(load_checkpoint(ckpt)["step"])
    assert checkpoint_info(ckpt)["step"] in (step, step - PRETRAIN["checkpoint_every"])
    assert step >= 10 and (step == PRETRAIN["steps"] or when == "training")

    proc = subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True)
    assert f"resuming from step {step} " in proc.stderr
    assert not list(tmp_path.glob(".bb.*")), "the rerun removes what the killed run left"
    load_backbone(out)  # complete and verified
    metrics, ref_metrics = read_json(out / "metrics.json"), read_json(pretrained_ref / "metrics.json")
    assert metrics["resumed_from"] == step and ref_metrics["resumed_from"] == 0
    for name in ("backbone.safetensors", "objective.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(pretrained_ref / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a), name
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    assert val and val == pytest.approx({k: ref_metrics[k] for k in val}, rel=1e-5)
    hist, ref_hist = read_json(out / "history.json"), read_json(pretrained_ref / "history.json")
    assert [h["step"] for h in hist] == [h["step"] for h in ref_hist] == [0, 50, 100, 150, 200, 250, 300]
    assert all(h == pytest.approx(r, rel=1e-5) for h, r in zip(hist, ref_hist, strict=True))


def test_stale_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    from physfm.io import _host, atomic_dir, remove_stale_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host()
    stale = tmp_path / f".bb.{host}-{dead.pid}.abc_123.partial"
    live = tmp_path / f".bb.{host}-{os.getppid()}.abc_123.partial"  # the parent of pytest is alive
    elsewhere = tmp_path / f".bb.{host}x-{dead.pid}.abc_123.partial"  # another machine: unknown, kept
    other = tmp_path / f".bbb.{host}-{dead.pid}.abc_123.partial"  # another target
    unnamed = tmp_path / ".bb.k2j4h5.partial"  # not a name physfm makes: left alone
    for d in (stale, live, elsewhere, other, unnamed):
        d.mkdir()
    (stale / "backbone.safetensors").write_bytes(b"half")
    assert remove_stale_partials(tmp_path / "bb") == [stale]
    assert not stale.exists() and all(d.exists() for d in (live, elsewhere, other, unnamed))
    # a swap killed between its two renames: the previous directory is put back
    old = tmp_path / f".bb.{host}-{dead.pid}.old.partial"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    remove_stale_partials(tmp_path / "bb")
    assert (tmp_path / "bb" / "manifest.json").is_file() and not old.exists()
    with atomic_dir(tmp_path / "bb") as tmp:
        assert tmp.name.startswith(f".bb.{host}-{os.getpid()}.") and tmp.name.endswith(".partial")
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in (tmp_path / "bb").iterdir()) == ["new"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "bb") as tmp:
        (tmp / "newer").write_text("x")
        raise RuntimeError("failed half-way")
    assert sorted(p.name for p in (tmp_path / "bb").iterdir()) == ["new"]
    assert not list(tmp_path.glob(f".bb.{host}-{os.getpid()}.*"))


# --------------------------------------------------------------------------- wrong parquet column types
def _write_kaggle(root: Path, pulses: dict | None = None, meta: dict | None = None) -> Path:
    """Three events in the Kaggle layout and dtypes; ``pulses``/``meta`` override columns."""
    (root / "train").mkdir(parents=True)
    pd.DataFrame({"sensor_id": np.arange(8), "x": np.arange(8.0), "y": 0.0, "z": -np.arange(8.0)}).to_csv(
        root / "sensor_geometry.csv", index=False
    )
    counts = np.array([3, 2, 4])
    p = {
        "sensor_id": np.array([0, 1, 2, 3, 4, 5, 6, 7, 0], dtype=np.int16),
        "time": np.arange(9, dtype=np.int64) * 10 + 5000,
        "charge": np.linspace(0.5, 2.5, 9),
        "auxiliary": np.array([0, 1, 0, 0, 1, 0, 1, 0, 0], dtype=bool),
        **(pulses or {}),
    }
    pd.DataFrame(p, index=pd.Index(np.repeat([24, 31, 40], counts).astype(np.int64), name="event_id")).to_parquet(
        root / "train" / "batch_1.parquet"
    )
    ends = np.cumsum(counts)
    m = {
        "batch_id": np.ones(3, dtype=np.int64),
        "event_id": np.array([24, 31, 40], dtype=np.int64),
        "first_pulse_index": ends - counts,
        "last_pulse_index": ends - 1,
        "azimuth": [0.1, 2.0, 4.0],
        "zenith": [0.3, 1.5, 2.8],
        **(meta or {}),
    }
    pd.DataFrame(m).to_parquet(root / "train_meta.parquet", index=False)
    return root


def test_kaggle_layout_itself_converts(tmp_path: Path) -> None:
    manifest, _ = convert("kaggle", _write_kaggle(tmp_path / "raw"), tmp_path / "out", progress=False)
    assert sum(manifest["n_events"].values()) == 3


@pytest.mark.parametrize(
    ("pulses", "meta", "file", "message"),
    [
        (
            {"charge": [f"{q:.2f}" for q in np.linspace(0.5, 2.5, 9)]},
            None,
            "batch_1.parquet",
            r"column 'charge' has type (large_)?string, expected a numeric type",
        ),
        (
            {"sensor_id": [0, 1, np.nan, 3, 4, 5, 6, 7, 0]},
            None,
            "batch_1.parquet",
            r"column 'sensor_id' has type float64 with value nan at row 2, expected whole numbers",
        ),
        (
            None,
            {"event_id": ["24", "31", "40"]},
            "train_meta.parquet",
            r"column 'event_id' has type (large_)?string, expected an integer type",
        ),
    ],
    ids=["charge-as-strings", "sensor_id-float-with-nan", "meta-event_id-as-strings"],
)
def test_kaggle_wrong_column_types_name_file_column_and_types(
    tmp_path: Path, pulses: dict | None, meta: dict | None, file: str, message: str
) -> None:
    raw = _write_kaggle(tmp_path / "raw", pulses, meta)
    with pytest.raises(DataError, match=message) as exc:
        convert("kaggle", raw, tmp_path / "out", progress=False)
    assert file in str(exc.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("table", "column", "value", "message"),
    [
        ("total", "t", lambda s: s.astype(str), r"column 't' has type (large_)?string, expected a numeric type"),
        (
            "total",
            "sensor_id",
            lambda s: s.astype(float).where(s.index != s.index[5]),
            r"column 'sensor_id' has type float64 with value nan at row 5, expected whole numbers",
        ),
        (
            "mc_truth",
            "injection_zenith",
            lambda s: s.astype(str),
            r"column 'injection_zenith' has type (large_)?string",
        ),
    ],
    ids=["t-as-strings", "sensor_id-float-with-nan", "truth-zenith-as-strings"],
)
def test_prometheus_wrong_column_types_name_file_column_and_types(
    tmp_path: Path, table: str, column: str, value: Callable[[pd.Series], pd.Series], message: str
) -> None:
    raw = tmp_path / "merged"
    shutil.copytree(PROMETHEUS, raw)
    path = raw / table / f"{table}_0.parquet"
    df = pd.read_parquet(path).reset_index(drop=False)
    df[column] = value(df[column].reset_index(drop=True))
    df.to_parquet(path, index=False)
    with pytest.raises(DataError, match=message) as exc:
        convert("prometheus", raw, tmp_path / "out", progress=False)
    assert path.name in str(exc.value)


# --------------------------------------------------------------------------- corrupt inputs refused downstream
@pytest.fixture(scope="module")
def tokenizer8(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from physfm.tokenizers import make_tokenizer

    out = tmp_path_factory.mktemp("tok") / "kmeans-8"
    make_tokenizer(jet_dataset, out, "kmeans", 8, progress=False, eval_events=100)
    return out


@pytest.fixture(scope="module")
def backbone(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny backbone directory, written like `physfm pretrain` writes one."""
    from physfm.finetune.train import prepare_backbone
    from physfm.pretrain.checkpoints import save_backbone

    model, meta = prepare_backbone(None, "scratch", jet_dataset, dict(TINY_ARCH), seed=0)
    out = tmp_path_factory.mktemp("bb") / "backbone"
    save_backbone(model, meta, out)
    return out


@pytest.fixture(scope="module")
def corrupt_copy(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``jet_dataset`` with one byte flipped in one train shard."""
    copy = tmp_path_factory.mktemp("corrupt") / "data"
    shutil.copytree(jet_dataset, copy)
    _flip_byte(copy / load_manifest(copy)["shards"][0]["path"])
    return copy


def _stage_tokenizer(data: Path, out: Path, tok: Path, bb: Path) -> None:
    from physfm.tokenizers.fit import fit_tokenizer

    fit_tokenizer(data, "kmeans", 8, progress=False)


def _stage_pretrain(data: Path, out: Path, tok: Path, bb: Path) -> None:
    from physfm.pretrain.train import PretrainConfig, pretrain

    cfg = PretrainConfig.from_dict(
        {
            "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
            "max_len": 32,
            "batch_size": 16,
            "steps": 2,
            "warmup_steps": 1,
            "norm_events": 100,
        }
    )
    pretrain(cfg, data, tok, out, progress=False, device="cpu")


def _stage_subsets(data: Path, out: Path, tok: Path, bb: Path) -> None:
    from physfm.finetune.subsets import make_subsets

    make_subsets(data, ["100"], seed=1, out_dir=out)


def _stage_summary(data: Path, out: Path, tok: Path, bb: Path) -> None:
    from physfm.data.summary import summarize

    summarize(data, out, max_events=100)


def _stage_finetune(data: Path, out: Path, tok: Path, bb: Path) -> None:
    from physfm.finetune.train import FinetuneConfig, finetune

    cfg = FinetuneConfig(mode="frozen", labels="100", max_steps=2, eval_every=1, device="cpu")
    finetune(data, out, cfg, backbone_dir=bb, progress=False)


def _stage_embed(data: Path, out: Path, tok: Path, bb: Path) -> None:
    cmd = _physfm("embed", "--backbone", str(bb), "--data", str(data), "--split", "val", "--out", str(out))
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if proc.returncode:
        raise DataError(proc.stderr)
    assert proc.returncode == 0


STAGES = {
    "tokenizer": _stage_tokenizer,
    "pretrain": _stage_pretrain,
    "subsets": _stage_subsets,
    "summary": _stage_summary,
    "finetune": _stage_finetune,
    "embed": _stage_embed,
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stages_refuse_a_dataset_that_does_not_verify(
    stage: str, jet_dataset: Path, corrupt_copy: Path, tokenizer8: Path, backbone: Path, tmp_path: Path
) -> None:
    STAGES[stage](jet_dataset, tmp_path / "good", tokenizer8, backbone)  # the intact dataset passes
    with pytest.raises(DataError) as exc:
        STAGES[stage](corrupt_copy, tmp_path / "bad", tokenizer8, backbone)
    msg = str(exc.value)
    assert f"{corrupt_copy} does not verify" in msg and "shard_00000.h5: sha256" in msg
    assert f"physfm verify {corrupt_copy}" in msg
    assert not (tmp_path / "bad").exists()


def test_corrupt_tokenizer_and_backbone_artefacts_are_refused(tokenizer8: Path, backbone: Path, tmp_path: Path) -> None:
    from physfm.pretrain.checkpoints import load_backbone
    from physfm.tokenizers import load_tokenizer

    for artefact in (tokenizer8, backbone):
        ok = subprocess.run(_physfm("verify", str(artefact)), env=ENV, capture_output=True, text=True)
        assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    tok, bb = tmp_path / "tok", tmp_path / "bb"
    shutil.copytree(tokenizer8, tok)
    shutil.copytree(backbone, bb)
    _flip_byte(tok / "weights.safetensors")
    _flip_byte(bb / "backbone.safetensors")
    with pytest.raises(DataError, match=rf"weights.safetensors: sha256(.|\n)*`physfm verify {re.escape(str(tok))}`"):
        load_tokenizer(tok)
    with pytest.raises(DataError, match=rf"{re.escape(str(bb))} does not verify(.|\n)*backbone.safetensors: sha256"):
        load_backbone(bb)
    for artefact, name in ((tok, "weights.safetensors"), (bb, "backbone.safetensors")):
        bad = subprocess.run(_physfm("verify", str(artefact)), env=ENV, capture_output=True, text=True)
        assert bad.returncode == 1 and f"{name}: sha256" in bad.stdout, bad.stdout + bad.stderr
