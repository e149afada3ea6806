"""Tokenizers on real Pythia jets: codebook health, round trips, VQ-VAE training, artefacts, CLI, MLflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from physfm.data.shards import DataError, load_manifest
from physfm.tokenizers import evaluate, fit_tokenizer, load_tokenizer
from physfm.tokenizers.metrics import load_events

FEATURES = ["log_pt", "deta", "dphi"]
FAST_VQ = {"steps": 200, "batch_size": 512, "dead_code_every": 25}
TINY_SET_VQ = {"conditional": True, "steps": 40, "jet_batch_size": 16, "hidden": 32, "layers": 1, "heads": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread each is fastest, and robust to a busy machine."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


@pytest.fixture(scope="module")
def val_events(jet_dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_events(jet_dataset, "val", FEATURES, 10_000)


@pytest.fixture(scope="module")
def kmeans64(jet_dataset: Path):
    return fit_tokenizer(jet_dataset, "kmeans", 64, seed=1, progress=False)


@pytest.fixture(scope="module")
def vqvae64(jet_dataset: Path):
    return fit_tokenizer(jet_dataset, "vqvae", 64, seed=0, options=FAST_VQ, progress=False)


def test_kmeans_uses_its_codebook(kmeans64, jet_dataset: Path) -> None:
    m = evaluate(kmeans64, jet_dataset, "val").metrics
    assert m["utilisation"] >= 0.9
    assert 0.5 * 64 < m["perplexity"] <= 64
    assert m["data_version"] == load_manifest(jet_dataset)["data_version"]
    assert set(m["resolution"]) == set(FEATURES)
    assert m["resolution"]["deta"]["std"] < 0.2  # deta spans ~[-0.8, 0.8]
    assert abs(m["jet"]["mass"]["q50"]) < 0.3 and m["jet"]["pt"]["std"] < 0.3


def test_encode_decode_contract(kmeans64, val_events) -> None:
    x, mask = val_events
    codes = kmeans64.encode(x, mask)
    assert codes.dtype == np.int64 and codes.shape == mask.shape
    assert (codes[~mask] == -1).all()
    assert codes[mask].min() >= 0 and codes[mask].max() < kmeans64.codebook_size
    dec = kmeans64.decode(codes, mask)
    assert dec.dtype == np.float32 and dec.shape == x.shape
    assert (dec[~mask] == 0).all()
    # per-particle: a jet's codes do not depend on the rest of the batch or on padding length
    assert (kmeans64.encode(x[:3, :70], mask[:3, :70]) == codes[:3, :70]).all()
    # a decoded particle is its code's centroid, so it encodes to the same code
    assert (kmeans64.encode(dec, mask)[mask] == codes[mask]).all()
    with pytest.raises(ValueError, match="features"):
        kmeans64.encode(x[..., :2], mask)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kmeans64.encode(bad, mask)
    wrong = codes.copy()
    wrong[0, 0] = 64
    with pytest.raises(ValueError, match="codes"):
        kmeans64.decode(wrong, mask)


def test_normalisation_is_fitted_on_train_only(kmeans64, jet_dataset: Path) -> None:
    from physfm.data.loader import load_arrays

    def particles(split: str) -> np.ndarray:
        a = load_arrays(jet_dataset, split, FEATURES, max_len=512)
        return a["x"][a["mask"]].astype(np.float64)

    train, val = particles("train"), particles("val")
    np.testing.assert_allclose(kmeans64.norm.mean, train.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kmeans64.norm.std, train.std(0), rtol=1e-4)
    assert not np.allclose(kmeans64.norm.mean, val.mean(0), rtol=1e-4, atol=1e-6)
    assert set(kmeans64.norm.to_json()) == set(FEATURES)


@pytest.mark.parametrize("method, sizes", [("kmeans", (8, 64, 512)), ("binning", (8, 64, 512))])
def test_reconstruction_error_shrinks_as_codebook_grows(method: str, sizes, jet_dataset: Path, val_events) -> None:
    x, mask = val_events
    errors = []
    for k in sizes:
        tok = fit_tokenizer(jet_dataset, method, k, seed=0, progress=False)
        assert tok.codebook_size == k
        err = ((tok.decode(tok.encode(x, mask), mask)[mask] - x[mask]) / tok.norm.std.astype(np.float32)) ** 2
        errors.append(float(err.mean()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.3 * errors[0]


def test_vqvae_training_reduces_loss_without_collapse(vqvae64, jet_dataset: Path) -> None:
    hist = vqvae64.fit_info["history"]
    assert hist[-1]["recon"] < 0.5 * hist[0]["recon"]
    m = evaluate(vqvae64, jet_dataset, "val").metrics
    assert m["utilisation"] >= 0.5, m["utilisation"]
    assert m["perplexity"] > 0.25 * 64
    assert m["mse_normalised"] < 0.5


def test_set_conditional_vqvae_uses_the_whole_event(jet_dataset: Path, val_events) -> None:
    import torch

    tok = fit_tokenizer(jet_dataset, "vqvae", 32, seed=0, options=TINY_SET_VQ, progress=False)
    hist = tok.fit_info["history"]
    assert hist[-1]["recon"] < hist[0]["recon"]
    x, mask = val_events[0][:8], val_events[1][:8]
    codes = tok.encode(x, mask)
    assert (codes[~mask] == -1).all() and codes[mask].min() >= 0
    assert tok.decode(codes, mask).shape == x.shape
    # a set: permuting a jet's particles permutes its codes
    n = int(mask[0].sum())
    perm = np.random.default_rng(0).permutation(n)
    xp = x[:1].copy()
    xp[0, :n] = x[0, perm]
    assert (tok.encode(xp, mask[:1])[0, :n] == codes[0, perm]).all()
    # conditional: the latent of particle 0 moves when another particle of its jet changes
    z = torch.from_numpy(tok.norm.transform(x[:1]))
    m = torch.from_numpy(mask[:1])
    with torch.no_grad():
        before = tok.model.latents(z, m)[0]
        z[0, 1] += 2.0
        after = tok.model.latents(z, m)[0]
    assert not torch.allclose(before, after)


def test_saved_tokenizers_reload_to_identical_codes(tmp_path: Path, jet_dataset: Path, kmeans64, vqvae64, val_events):
    x, mask = val_events
    binning = fit_tokenizer(jet_dataset, "binning", 64, seed=0, options={"scheme": "uniform"}, progress=False)
    for tok in (kmeans64, vqvae64, binning):
        out = tok.save(tmp_path / tok.method)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["kind"] == "tokenizer" and manifest["version"] == tok.version
        assert manifest["inputs"]["data_version"] == load_manifest(jet_dataset)["data_version"]
        back = load_tokenizer(out)
        assert (back.method, back.codebook_size, back.features, back.version) == (
            tok.method,
            tok.codebook_size,
            tok.features,
            tok.version,
        )
        codes = tok.encode(x, mask)
        np.testing.assert_array_equal(back.encode(x, mask), codes)
        np.testing.assert_array_equal(back.decode(codes, mask), tok.decode(codes, mask))
    weights = tmp_path / "kmeans" / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256"):
        load_tokenizer(tmp_path / "kmeans")
    with pytest.raises(DataError, match="does not describe a tokenizer"):
        load_tokenizer(jet_dataset)


def test_fits_are_deterministic(jet_dataset: Path, kmeans64) -> None:
    assert fit_tokenizer(jet_dataset, "kmeans", 64, seed=1, progress=False).version == kmeans64.version
    assert fit_tokenizer(jet_dataset, "kmeans", 64, seed=2, progress=False).version != kmeans64.version
    opts = {"steps": 20, "batch_size": 256}
    a = fit_tokenizer(jet_dataset, "vqvae", 16, seed=3, options=opts, progress=False)
    b = fit_tokenizer(jet_dataset, "vqvae", 16, seed=3, options=opts, progress=False)
    assert a.version == b.version


def test_bad_requests_say_what_is_wrong(jet_dataset: Path) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        fit_tokenizer(jet_dataset, "kmeans", 16, options={"nitre": 3})
    with pytest.raises(ValueError, match="expected int"):
        fit_tokenizer(jet_dataset, "kmeans", 16, options={"niter": "many"})
    with pytest.raises(ValueError, match="not available"):
        fit_tokenizer(jet_dataset, "kmeans", 16, features=["log_pt", "rapidity"])
    with pytest.raises(ValueError, match="unknown tokenizer method"):
        fit_tokenizer(jet_dataset, "pq", 16)
    with pytest.raises(ValueError, match="at least K"):
        fit_tokenizer(jet_dataset, "kmeans", 16, options={"sample": 10})


def test_cli_fit_encode_decode_and_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jet_dataset: Path) -> None:
    import h5py

    from physfm import tracking
    from physfm.cli import main

    monkeypatch.setenv("PHYSFM_TRACKING", "1")
    monkeypatch.setenv("PHYSFM_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PHYSFM_EXPERIMENT", "tokenizer-test")
    out = tmp_path / "binning-27"
    args = ["tokenizer", "fit", "--method", "binning", "-k", "27", "--data", str(jet_dataset), "--out", str(out)]
    assert main([*args, "--option", "scheme=uniform", "--no-progress", "--tag", "rule=test"]) == 0
    for name in ("manifest.json", "tokenizer.json", "weights.safetensors", "metrics.json"):
        assert (out / name).is_file(), name
    for name in ("code_usage.png", "features.png", "jet_closure.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    metrics = json.loads((out / "metrics.json").read_text())
    tok = load_tokenizer(out)
    assert metrics["split"] == "val" and metrics["tokenizer_version"] == tok.version
    assert tok.config.scheme == "uniform" and tok.codebook_size == 27

    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tokenizer-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["tokenizer_version"] == tok.version
    assert run.data.tags["data_version.in"] == tok.data_version
    assert run.data.metrics["utilisation"] == pytest.approx(metrics["utilisation"])
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "tokenizer/plots")}
    assert {"code_usage.png", "features.png", "jet_closure.png"} <= plots
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [tok.data_version]

    monkeypatch.setenv("PHYSFM_TRACKING", "0")
    codes_file, dec_file = tmp_path / "codes.h5", tmp_path / "decoded.h5"
    data = ["--data", str(jet_dataset)]
    assert main(["tokenizer", "encode", "--tokenizer", str(out), *data, "--out", str(codes_file)]) == 0
    decode = ["tokenizer", "decode", "--tokenizer", str(out), "--codes", str(codes_file)]
    assert main([*decode, "--out", str(dec_file)]) == 0
    x, mask = load_events(jet_dataset, "val", tok.features, 10_000)
    with h5py.File(codes_file) as f, h5py.File(dec_file) as g:
        np.testing.assert_array_equal(f["codes"][:], tok.encode(x, mask)[mask])
        np.testing.assert_allclose(g["features"][:], tok.decode(tok.encode(x, mask), mask)[mask])
    assert main([*args[:-1], str(tmp_path / "bad"), "--option", "schema=uniform"]) == 2


def test_schema_defaults_match_method_options() -> None:
    from physfm.tokenizers.options import CONFIGS

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    section = schema["properties"]["tokenizer"]["properties"]
    for method, cls in CONFIGS.items():
        props = section[method]["properties"]
        assert set(props) == {f.name for f in dataclasses.fields(cls)}, method
        for f in dataclasses.fields(cls):
            assert props[f.name]["default"] == f.default, f"{method}.{f.name}"
            assert props[f.name].get("description"), f"{method}.{f.name}"
