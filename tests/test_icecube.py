"""IceCube modality: Kaggle and Prometheus readers, the IC86 simulator, derived features, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from physfm.data import icecube
from physfm.data.convert import convert
from physfm.data.loader import open_split
from physfm.data.shards import SPLITS, DataError, EventBlock, feature_names, load_manifest

PROMETHEUS = Path(__file__).parent / "data" / "graphnet" / "examples" / "parquet" / "prometheus" / "merged"


def _all_events(data_dir: Path) -> tuple[EventBlock, dict]:
    """Every event of a dataset (all splits), with its manifest."""
    manifest = load_manifest(data_dir, verify=True)
    blocks = [open_split(data_dir, s).read() for s in SPLITS if manifest["n_events"].get(s)]
    return EventBlock.concat(blocks), manifest


def _rows_of(block: EventBlock, i: int) -> np.ndarray:
    return block.particles[block.offsets[i] : block.offsets[i + 1]]


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


# --------------------------------------------------------------------------- Prometheus
def test_prometheus_fixture_converts_losslessly(tmp_path: Path) -> None:
    out = tmp_path / "data"
    manifest, stats = convert("prometheus", PROMETHEUS, out, shard_events=8, progress=False)
    block, manifest = _all_events(out)
    hits = pd.concat([pd.read_parquet(p) for p in sorted((PROMETHEUS / "total").glob("*.parquet"))])
    truth = pd.concat([pd.read_parquet(p) for p in sorted((PROMETHEUS / "mc_truth").glob("*.parquet"))])
    assert stats.events_written == len(truth) == 50 and len(block) == 50
    assert block.offsets[-1] == len(hits) == 1872
    assert manifest["modality"] == "icecube" and manifest["classes"] == []
    assert (block.label == -1).all()
    pnames, enames = feature_names(manifest, "particle"), feature_names(manifest, "event")
    assert pnames == list(icecube.PULSE_FEATURES)
    ev_col = {n: j for j, n in enumerate(enames)}
    for i in range(len(block)):
        event_no = int(block.events[i, ev_col["event_id"]])
        raw = hits.loc[[event_no]]
        want = np.column_stack(
            [
                raw["sensor_id"],
                raw["t"],
                np.ones(len(raw)),
                np.zeros(len(raw)),
                raw["sensor_pos_x"],
                raw["sensor_pos_y"],
                raw["sensor_pos_z"],
            ]
        ).astype(np.float64)
        got = _rows_of(block, i)
        np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(want))  # exact: lossless
        assert np.all(np.diff(got[:, 1]) >= 0)  # all non-auxiliary: time order
        t = truth.loc[event_no]
        assert block.events[i, ev_col["zenith"]] == t["injection_zenith"]
        assert block.events[i, ev_col["azimuth"]] == t["injection_azimuth"]
        assert block.events[i, ev_col["energy"]] == t["injection_energy"]
        assert block.events[i, ev_col["primary_lepton_1_energy"]] == t["primary_lepton_1_energy"]
        assert block.events[i, ev_col["n_pulses"]] == len(raw)
        d = block.events[i, [ev_col["dir_x"], ev_col["dir_y"], ev_col["dir_z"]]]
        assert np.isclose(np.linalg.norm(d), 1.0)
        assert np.isclose(d[2], np.cos(t["injection_zenith"]))
    # geometry stored once: every sensor seen, at its exact position
    geo = icecube.read_geometry(out, manifest)
    sensors = hits.drop_duplicates("sensor_id").set_index("sensor_id").sort_index()
    np.testing.assert_array_equal(geo["sensor_id"], sensors.index.to_numpy())
    np.testing.assert_array_equal(geo["x"], sensors["sensor_pos_x"].to_numpy())
    np.testing.assert_array_equal(geo["z"], sensors["sensor_pos_z"].to_numpy())
    assert icecube.n_sensors(out) == int(hits["sensor_id"].max()) + 1


def test_prometheus_missing_truth_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "total").mkdir()
    src = PROMETHEUS / "total" / "total_0.parquet"
    (tmp_path / "total" / "total_0.parquet").write_bytes(src.read_bytes())
    with pytest.raises(DataError, match="truth file .*mc_truth_0.parquet is missing"):
        convert("prometheus", tmp_path, tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- Kaggle
def _write_kaggle(root: Path, n_per_batch: tuple[int, ...] = (37, 23), seed: int = 0, meta_groups: int = 3) -> dict:
    """A small dataset in the exact Kaggle layout and dtypes (pulses indexed by event_id)."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    geo = pd.DataFrame(
        {
            "sensor_id": np.arange(icecube.N_SENSORS),
            "x": np.round(rng.uniform(-570, 580, icecube.N_SENSORS), 2),
            "y": np.round(rng.uniform(-520, 510, icecube.N_SENSORS), 2),
            "z": np.round(rng.uniform(-512, 525, icecube.N_SENSORS), 2),
        }
    )
    geo.to_csv(root / "sensor_geometry.csv", index=False)
    metas, eid = [], 24
    for b, n in enumerate(n_per_batch, start=1):
        counts = rng.integers(1, 60, n)
        ids = eid + np.cumsum(rng.integers(1, 50, n))
        eid = int(ids[-1])
        rows = int(counts.sum())
        t = np.concatenate([np.sort(rng.integers(5000, 20000, c)) for c in counts]).astype(np.int64)
        pulses = pd.DataFrame(
            {
                "sensor_id": rng.integers(0, icecube.N_SENSORS, rows).astype(np.int16),
                "time": t,
                "charge": np.round(rng.exponential(1.0, rows) / 0.025) * 0.025 + 0.025,
                "auxiliary": rng.random(rows) < 0.6,
            },
            index=pd.Index(np.repeat(ids, counts).astype(np.int64), name="event_id"),
        )
        pulses.to_parquet(root / "train" / f"batch_{b}.parquet", row_group_size=97)
        ends = np.cumsum(counts)
        metas.append(
            pd.DataFrame(
                {
                    "batch_id": np.full(n, b, dtype=np.int64),
                    "event_id": ids.astype(np.int64),
                    "first_pulse_index": (ends - counts).astype(np.int64),
                    "last_pulse_index": (ends - 1).astype(np.int64),
                    "azimuth": rng.uniform(0, 2 * np.pi, n),
                    "zenith": rng.uniform(0, np.pi, n),
                }
            )
        )
    meta = pd.concat(metas, ignore_index=True)
    meta.to_parquet(root / "train_meta.parquet", index=False, row_group_size=-(-len(meta) // meta_groups))
    return {"meta": meta, "geometry": geo}


def test_kaggle_layout_converts_losslessly_with_bounded_reads(tmp_path: Path) -> None:
    raw = tmp_path / "kaggle"
    ref = _write_kaggle(raw)
    meta, geo = ref["meta"], ref["geometry"].set_index("sensor_id")
    outs = {}
    for name, opts in {
        "direct": {},
        # tiny parquet reads, and train_meta split through the on-disk per-batch cache
        "streamed": {"read_rows": 13, "max_group_rows": 1, "meta_cache": str(tmp_path / "cache")},
    }.items():
        out = tmp_path / name
        _, stats = convert("kaggle", raw, out, shard_events=16, reader_options=opts, step=7, progress=False)
        assert stats.events_written == len(meta)
        outs[name] = _all_events(out)
    (a, manifest), (b, _) = outs["direct"], outs["streamed"]
    np.testing.assert_array_equal(a.event_key, b.event_key)
    np.testing.assert_array_equal(a.particles, b.particles)
    assert manifest["extras"]["geometry"]["path"] == "geometry.csv"

    enames = feature_names(manifest, "event")
    col = {n: j for j, n in enumerate(enames)}
    batches = {p.name: pd.read_parquet(p) for p in (raw / "train").glob("*.parquet")}
    by_id = meta.set_index("event_id")
    assert a.offsets[-1] == sum(len(df) for df in batches.values())
    for i in range(len(a)):
        eid = int(a.events[i, col["event_id"]])
        m = by_id.loc[eid]
        pulses = batches[f"batch_{int(m['batch_id'])}.parquet"].iloc[
            int(m["first_pulse_index"]) : int(m["last_pulse_index"]) + 1
        ]
        assert (pulses.index == eid).all()
        got = _rows_of(a, i)
        xyz = geo.loc[pulses["sensor_id"].to_numpy()].to_numpy()
        want = np.column_stack(
            [pulses["sensor_id"], pulses["time"], pulses["charge"], pulses["auxiliary"], xyz]
        ).astype(np.float64)
        np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(want))
        # PolarBERT order: non-auxiliary pulses first, each part in time order
        aux = got[:, 3]
        assert np.all(np.diff(aux) >= 0)
        for part in (got[aux == 0], got[aux == 1]):
            assert np.all(np.diff(part[:, 1]) >= 0)
        assert a.events[i, col["azimuth"]] == m["azimuth"] and a.events[i, col["zenith"]] == m["zenith"]
        assert a.events[i, col["n_pulses"]] == len(pulses)
        assert np.isclose(a.events[i, col["total_charge"]], pulses["charge"].sum())


def test_kaggle_errors_name_the_problem(tmp_path: Path) -> None:
    raw = tmp_path / "kaggle"
    _write_kaggle(raw, n_per_batch=(5,))
    meta = pd.read_parquet(raw / "train_meta.parquet")
    meta.loc[2, "event_id"] += 1  # a meta row that points at another event's pulses
    meta.to_parquet(raw / "train_meta.parquet", index=False)
    with pytest.raises(DataError, match="has event_id .* meta"):
        convert("kaggle", raw, tmp_path / "out", progress=False)
    (raw / "sensor_geometry.csv").unlink()
    with pytest.raises(DataError, match="no sensor_geometry.csv"):
        convert("kaggle", raw, tmp_path / "out", progress=False)


def test_jet_labels_are_refused_for_icecube_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from physfm.cli import main

    raw = tmp_path / "kaggle"
    _write_kaggle(raw, n_per_batch=(5,))
    args = ["convert", "--format", "kaggle", "--input", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--config", '{"labels": ["label_QCD", "label_Tbqq"]}']) != 0
    assert "drop labels" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def sim() -> object:
    from physfm.data.generate_icecube import simulate

    return simulate(400, seed=5)


def _geometric_times(sim: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direct-light arrival time, perpendicular (track) or radial (cascade) distance, track flag, per pulse."""
    geo = icecube.load_ic86_geometry()
    pos = np.full((icecube.N_SENSORS, 3), np.nan)
    pos[geo["sensor_id"]] = np.column_stack([geo["x"], geo["y"], geo["z"]])
    counts = np.diff(sim.offsets)
    tr = {k: np.repeat(v, counts) for k, v in sim.truth.items()}
    v = -icecube.direction(tr["azimuth"], tr["zenith"])  # direction of travel
    d = pos[sim.sensor_id.astype(int)] - np.column_stack([tr["pos_x"], tr["pos_y"], tr["pos_z"]])
    lon = (d * v).sum(1)
    r = np.linalg.norm(d, axis=1)
    rho = np.sqrt(np.maximum(r**2 - lon**2, 0))
    c, n, th = 0.299792458, 1.35, np.deg2rad(41.0)
    rho1 = np.maximum(rho, 1.0)
    t_track = tr["t0"] + (lon - rho1 / np.tan(th)) / c + rho1 / np.sin(th) * n / c
    t_casc = tr["t0"] + np.maximum(r, 1.0) * n / c
    track = tr["is_track"] == 1
    return np.where(track, t_track, t_casc), np.where(track, rho, r), track


def test_simulated_pulses_are_causal_and_fall_with_distance(sim: object) -> None:
    assert len(sim) == 400
    t_geo, dist, track = _geometric_times(sim)
    phys = ~sim.noise
    early = sim.time[phys] - t_geo[phys]
    assert early.min() >= -5 * 2.0 - 1.0  # never before direct light (beyond PMT jitter + ns flooring)
    assert np.median(early) > 5.0  # scattering delays light: Pandel, not all direct
    # dark noise is uniform in the window, so about as often before the direct light as after
    assert (sim.time[~phys] < t_geo[~phys] - 50).mean() > 0.2
    # summed charge per hit DOM falls with distance from the track
    counts = np.diff(sim.offsets)
    ev = np.repeat(np.arange(len(sim)), counts)
    sel = phys & track
    key = ev[sel] * icecube.N_SENSORS + sim.sensor_id[sel]
    _, inv = np.unique(key, return_inverse=True)
    q = np.bincount(inv, weights=sim.charge[sel])
    rho = np.zeros(len(q))
    rho[inv] = dist[sel]
    means = [q[(rho >= a) & (rho < b)].mean() for a, b in [(0, 20), (20, 50), (50, 100), (100, 200)]]
    assert all(x > y for x, y in zip(means, means[1:], strict=False)), means
    assert means[0] > 3 * means[-1]


def test_simulated_auxiliary_flag_is_the_local_coincidence(sim: object) -> None:
    assert 0.1 < sim.auxiliary.mean() < 0.7  # Kaggle-like mix of HLC and SLC pulses
    assert sim.auxiliary[sim.noise].mean() > 0.9  # isolated noise hits are auxiliary
    assert sim.auxiliary[~sim.noise].mean() < 0.5
    # brute force on a few events: non-auxiliary <=> a pulse on a DOM within +-2 on the string within 1 us
    for i in range(0, 400, 40):
        a, b = sim.offsets[i], sim.offsets[i + 1]
        s = sim.sensor_id[a:b].astype(int)
        t = sim.time[a:b]
        string, dom = s // 60, s % 60
        near = (string[:, None] == string[None, :]) & (np.abs(dom[:, None] - dom[None, :]) <= 2)
        near &= dom[:, None] != dom[None, :]
        near &= np.abs(t[:, None] - t[None, :]) <= 1000
        np.testing.assert_array_equal(~sim.auxiliary[a:b], near.any(axis=1))
    # the trigger: every kept event has >= 8 DOMs with non-auxiliary pulses
    counts = np.diff(sim.offsets)
    ev = np.repeat(np.arange(len(sim)), counts)
    hlc = np.unique(ev[~sim.auxiliary] * icecube.N_SENSORS + sim.sensor_id[~sim.auxiliary]) // icecube.N_SENSORS
    assert np.bincount(hlc, minlength=len(sim)).min() >= 8


def test_simulation_is_deterministic() -> None:
    from physfm.data.generate_icecube import simulate

    a, b, c = simulate(30, seed=2), simulate(30, seed=2), simulate(30, seed=3)
    np.testing.assert_array_equal(a.time, b.time)
    np.testing.assert_array_equal(a.charge, b.charge)
    assert len(a.time) != len(c.time) or not np.array_equal(a.time, c.time)


def test_generate_writes_valid_kaggle_layout(tmp_path: Path) -> None:
    from physfm.cli import main

    raw = tmp_path / "raw"
    rc = main(
        [
            "generate",
            "icecube",
            "--out",
            str(raw),
            "--n-events",
            "250",
            "--seed",
            "4",
            "--config",
            '{"events_per_batch": 100}',
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    info = json.loads((raw / "generation.json").read_text())
    assert info["params"]["n_events"] == 250
    meta = pd.read_parquet(raw / "train_meta.parquet")
    assert list(meta.columns[:6]) == [
        "batch_id",
        "event_id",
        "first_pulse_index",
        "last_pulse_index",
        "azimuth",
        "zenith",
    ]
    assert len(meta) == 250 and meta["event_id"].is_unique
    assert sorted(meta["batch_id"].unique()) == [1, 2, 3]
    geo = pd.read_csv(raw / "sensor_geometry.csv")
    assert list(geo.columns) == ["sensor_id", "x", "y", "z"] and len(geo) == 5083
    for b, m in meta.groupby("batch_id"):
        f = raw / "train" / f"batch_{b}.parquet"
        schema = pq.read_schema(f)
        assert schema.field("sensor_id").type == pa.int16() and schema.field("time").type == pa.int64()
        assert schema.field("charge").type == pa.float64() and schema.field("auxiliary").type == pa.bool_()
        pulses = pd.read_parquet(f)
        assert pulses.index.name == "event_id"
        assert m["first_pulse_index"].iloc[0] == 0 and m["last_pulse_index"].iloc[-1] == len(pulses) - 1
        assert (m["first_pulse_index"].to_numpy()[1:] == m["last_pulse_index"].to_numpy()[:-1] + 1).all()
        ids = np.repeat(m["event_id"], m["last_pulse_index"] - m["first_pulse_index"] + 1)
        np.testing.assert_array_equal(pulses.index.to_numpy(), ids.to_numpy())
        assert pulses["sensor_id"].isin(geo["sensor_id"]).all()
        assert (pulses.groupby(level=0)["time"].apply(lambda t: t.is_monotonic_increasing)).all()
    out = tmp_path / "data"
    manifest, stats = convert("kaggle", raw, out, shard_events=100, progress=False)
    assert stats.events_written == 250
    assert "energy" in feature_names(manifest, "event") and icecube.n_sensors(out) == icecube.N_SENSORS


# --------------------------------------------------------------------------- features, metrics
def test_icecube_derived_features(tmp_path: Path) -> None:
    from physfm.features import available, compute

    raw = tmp_path / "kaggle"
    _write_kaggle(raw, n_per_batch=(12,))
    convert("kaggle", raw, tmp_path / "data", progress=False)
    s = open_split(tmp_path / "data", "train")
    block = s.read()
    names = ["dom", "t_rel", "log_charge", "aux", "event_log10_qtot"]
    assert set(names) <= set(available(s.manifest))
    f = compute(block, s.manifest, names)
    p = block.particles
    np.testing.assert_array_equal(f[:, 0], p[:, 0].astype(np.float32))
    np.testing.assert_allclose(f[:, 2], np.log10(p[:, 2]), rtol=1e-6)
    for i in range(len(block)):
        r = slice(block.offsets[i], block.offsets[i + 1])
        t, aux = p[r, 1], p[r, 3]
        ref = t[aux == 0].min() if (aux == 0).any() else t.min()
        np.testing.assert_allclose(f[r, 1], t - ref)
        np.testing.assert_allclose(f[r, 4], np.log10(p[r, 2].sum()), rtol=1e-6)


def test_angular_distance_perfect_and_random() -> None:
    rng = np.random.default_rng(0)
    az, zen = rng.uniform(0, 2 * np.pi, 20000), np.arccos(rng.uniform(-1, 1, 20000))
    truth = icecube.direction(az, zen)
    assert np.abs(icecube.angular_distance(truth, truth)).max() < 1e-7
    assert np.abs(icecube.angular_distance(truth, 3.7 * truth)).max() < 1e-7  # scale does not matter
    rand = rng.normal(size=truth.shape)
    mean_deg = np.degrees(icecube.angular_distance(truth, rand)).mean()
    assert abs(mean_deg - 90.0) < 1.0
    np.testing.assert_allclose(np.degrees(icecube.angular_distance(truth, -truth)), 180.0)
    a2, z2 = icecube.angles(truth)
    np.testing.assert_allclose(icecube.direction(a2, z2), truth, atol=1e-12)


# --------------------------------------------------------------------------- PolarBERT and direction
def _polarbert_batch(seed: int = 0) -> tuple[dict, list[str]]:
    rng = np.random.default_rng(seed)
    b, length, features = 6, 12, ["t_rel", "log_charge", "aux", "x_cog"]
    n = np.array([12, 9, 5, 1, 7, 3])
    mask = np.arange(length)[None, :] < n[:, None]
    aux = (rng.random((b, length)) < 0.4) & mask
    aux[5, :3] = True  # an event with only auxiliary pulses: nothing to predict
    x = rng.normal(size=(b, length, len(features))).astype(np.float32) * mask[..., None]
    raw = {"dom": np.where(mask, rng.integers(0, 50, (b, length)), 0).astype(np.float32), "aux": aux.astype(np.float32)}
    batch = {"x": x, "mask": mask, "event_key": rng.integers(0, 2**63, b).astype(np.uint64), "raw": raw}
    return batch, features


def _polarbert(features: list[str]) -> tuple[object, object]:
    import torch

    from physfm.models import Backbone, BackboneConfig
    from physfm.models.polarbert import PolarBERT

    opts = {"n_doms": 50, "mask_fraction": 0.5}
    torch.manual_seed(0)
    cfg = PolarBERT.configure_backbone(
        {"n_features": len(features), "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 12}, opts, 0
    )
    model = Backbone(BackboneConfig.from_dict(cfg))
    obj = PolarBERT(16, opts, features=features)
    return model.eval(), obj.eval()


def test_polarbert_dom_loss_ignores_auxiliary_and_padding() -> None:
    import torch

    batch, features = _polarbert_batch()
    model, obj = _polarbert(features)
    mask, aux = batch["mask"], batch["raw"]["aux"] > 0
    for salt in range(20):
        b = obj.prepare({k: (dict(v) if k == "raw" else v.copy()) for k, v in batch.items()}, salt=salt)
        sel = b["dom_masked"]
        assert not (sel & ~mask).any() and not (sel & aux).any()  # never padding, never auxiliary
        n_ok = (mask & ~aux).sum(1)
        np.testing.assert_array_equal(sel.sum(1), np.where(n_ok > 0, np.maximum(1, np.rint(0.5 * n_ok)), 0))
        assert (b["dom_in"][sel] == 50).all() and (b["dom_in"][~sel] == b["dom"][~sel]).all()
        assert (b["x"][sel][:, 3] == 0).all()  # x_cog hidden for masked pulses only
        np.testing.assert_array_equal(b["x"][~sel], batch["x"][~sel])
    t = {
        k: torch.from_numpy(np.asarray(v).view(np.int64) if np.asarray(v).dtype == np.uint64 else np.asarray(v))
        for k, v in b.items()
        if k != "raw"
    }
    t["global"] = torch.zeros(len(mask), 0)
    with torch.no_grad():
        loss, stats = obj(model, t)
        assert float(stats["loss_dom"][1]) == sel.sum()
        other = t["dom"].clone()
        other[torch.from_numpy(~sel)] = 7  # targets outside the masked non-auxiliary pulses
        padded = {**t, "dom": other}
        pad = torch.from_numpy(~mask)
        padded["x"] = t["x"].masked_fill(pad[..., None], 9.0)  # and any content at padding
        padded["dom_in"] = t["dom_in"].masked_fill(pad, 3)
        assert torch.allclose(obj(model, padded)[0], loss)
        changed = t["dom"].clone()
        i, j = np.argwhere(sel)[0]
        changed[i, j] = (changed[i, j] + 1) % 50
        assert not torch.allclose(obj(model, {**t, "dom": changed})[0], loss)


def test_angular_loss_perfect_and_random() -> None:
    import torch

    from physfm.finetune.direction import angular_error, direction_metrics

    rng = np.random.default_rng(1)
    truth = icecube.direction(rng.uniform(0, 2 * np.pi, 5000), np.arccos(rng.uniform(-1, 1, 5000)))
    perfect = torch.tensor(truth, requires_grad=True)
    err = angular_error(perfect, torch.tensor(truth))
    assert float(err.detach().max()) < 1e-3  # rad: exact up to the clamp that keeps gradients finite
    err.mean().backward()
    assert torch.isfinite(perfect.grad).all()
    rand = torch.tensor(rng.normal(size=truth.shape))
    assert abs(float(angular_error(rand, torch.tensor(truth)).mean()) - np.pi / 2) < 0.03
    m, s = direction_metrics(truth * 2.0, truth, n_bootstrap=20)
    assert m["mean_angular_error_deg"] < 1e-6 and m["median_angular_error_deg"] < 1e-6
    m, s = direction_metrics(rand.numpy(), truth, n_bootstrap=20)
    assert abs(m["mean_angular_error_deg"] - 90.0) < 2.0 and abs(m["median_angular_error_deg"] - 90.0) < 3.0
    assert 0 < s["mean_angular_error_deg"] < 2.0


@pytest.mark.slow
def test_prometheus_flows_through_polarbert_pretraining_and_direction(tmp_path: Path) -> None:
    from physfm.evaluate.evaluate import evaluate_model
    from physfm.finetune.model import load_model
    from physfm.finetune.train import FinetuneConfig, finetune
    from physfm.pretrain.checkpoints import load_backbone
    from physfm.pretrain.train import PretrainConfig, pretrain

    data = tmp_path / "data"
    convert("prometheus", PROMETHEUS, data, shard_events=20, progress=False)
    features = ["t_cog", "log_charge", "aux", "x_cog", "y_cog", "z_cog"]
    cfg = PretrainConfig.from_dict(
        {
            "objective": "polarbert",
            "features": features,
            "max_len": 32,
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2},
            "objectives": {"polarbert": {"n_doms": icecube.n_sensors(data)}},
            "global_targets": ["log10_qtot"],
            "global_weight": 1.0,
            "steps": 6,
            "batch_size": 8,
            "val_every": 3,
            "checkpoint_every": 100,
            "warmup_steps": 2,
        }
    )
    result = pretrain(cfg, data, None, tmp_path / "bb", progress=False)
    assert np.isfinite(result["val/loss_dom"]) and result["val/loss_dom"] > 0
    model, meta = load_backbone(tmp_path / "bb")
    assert meta["objective"] == "polarbert" and meta["features"] == features
    assert model.config.vocab_size == icecube.n_sensors(data) + 1
    ft = FinetuneConfig(mode="finetune", labels="12", seed=1, max_steps=4, eval_every=2, batch_size=8)
    finetune(data, tmp_path / "dir", ft, backbone_dir=tmp_path / "bb", progress=False)  # task auto: direction
    res = evaluate_model(tmp_path / "dir", data, split="test", n_bootstrap=5)
    assert res["task"] == "direction" and res["lower_is_better"]
    assert res["metrics"]["n_events"] == load_manifest(data)["n_events"]["test"]
    assert 0 <= res["metrics"]["mean_angular_error_deg"] <= 180
    _, task, dmeta = load_model(tmp_path / "dir")
    assert task.name == "direction" and (tmp_path / "dir" / "direction.json").is_file()
    assert dmeta["n_labels"] == 12 and dmeta["backbone"]["objective"] == "polarbert"

    # embedding search works on PolarBERT backbones: they get the DOM ids as tokens
    import torch

    from physfm.evaluate.evaluate import embed_split, load_embedder

    emb_model, bmeta = load_embedder(tmp_path / "bb")
    with torch.no_grad():
        emb, _, keys, emeta = embed_split(emb_model, bmeta, data, "test")
    n_test = load_manifest(data)["n_events"]["test"]
    assert emb.shape == (n_test, 32) and np.isfinite(emb).all() and len(keys) == n_test
    assert emeta["objective"] == "polarbert"
    # without the DOM ids (what embed_split passed before) the backbone cannot embed the events
    with torch.no_grad(), pytest.raises(ValueError, match="token ids"):
        embed_split(emb_model, {**bmeta, "objective": "mpm"}, data, "test")
