"""ROOT (JetClass schema) -> HDF5 shards: losslessness, data versions, bad input, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from physfm.data.convert import convert
from physfm.data.jetclass import ALL_LABELS, JET_BRANCHES, PARTICLE_BRANCHES
from physfm.data.loader import ShardDataset, load_arrays, open_split
from physfm.data.shards import DataError, EventBlock, event_keys, load_manifest, verify_dataset

LABELS = ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]


def _all_events(data_dir: Path) -> EventBlock:
    blocks = [
        open_split(data_dir, s).read() for s in ("train", "val", "test") if load_manifest(data_dir)["n_events"][s]
    ]
    return EventBlock.concat(blocks)


def _write_jetclass(path: Path, n: int, seed: int, *, nan_at: int | None = None, empty_at: int | None = None) -> Path:
    """A small JetClass-schema file with random content (for bad-input tests)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 30, n)
    if empty_at is not None:
        counts[empty_at] = 0
    flat = {b: rng.normal(size=counts.sum()).astype(np.float32) for b in PARTICLE_BRANCHES}
    if nan_at is not None:
        flat["part_px"][counts[:nan_at].sum()] = np.nan
    with uproot.recreate(path) as f:
        types = {b: "var * float32" for b in PARTICLE_BRANCHES}
        types.update({b: "float32" for b in JET_BRANCHES})
        types.update({b: "bool" for b in ALL_LABELS})
        tree = f.mktree("tree", types)
        data = {b: ak.unflatten(v, counts) for b, v in flat.items()}
        data.update({b: rng.normal(size=n).astype(np.float32) for b in JET_BRANCHES})
        cls = rng.integers(0, 4, n)
        data.update({b: (cls == LABELS.index(b)) if b in LABELS else np.zeros(n, bool) for b in ALL_LABELS})
        tree.extend(data)
    return path


def test_round_trip_preserves_every_kept_value(jet_files: list[Path], jet_dataset: Path) -> None:
    manifest = load_manifest(jet_dataset, verify=True)
    stored = _all_events(jet_dataset)
    assert sum(manifest["n_events"].values()) == len(stored)

    pnames, enames = list(PARTICLE_BRANCHES), list(JET_BRANCHES)
    blocks = []
    for path in jet_files:
        arrays = uproot.open(path)["tree"].arrays(pnames + enames + LABELS, library="ak")
        counts = ak.to_numpy(ak.num(arrays[pnames[0]]))
        parts = np.stack([ak.to_numpy(ak.flatten(arrays[b])) for b in pnames], axis=1)
        events = np.stack([ak.to_numpy(arrays[b]) for b in enames], axis=1)
        label = np.argmax(np.stack([ak.to_numpy(arrays[b]) for b in LABELS], axis=1), axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        blocks.append(EventBlock(offsets, parts, events, label, event_keys(offsets, parts, events)))
    source = EventBlock.concat(blocks)
    assert len(source) == len(stored)
    assert stored.particles.dtype == source.particles.dtype == np.float32

    so, to = np.argsort(source.event_key), np.argsort(stored.event_key)
    np.testing.assert_array_equal(source.event_key[so], stored.event_key[to])
    src, dst = _take(source, so), _take(stored, to)
    np.testing.assert_array_equal(src.offsets, dst.offsets)
    np.testing.assert_array_equal(src.particles, dst.particles)  # bit-exact, every particle kept
    np.testing.assert_array_equal(src.events, dst.events)
    np.testing.assert_array_equal(src.label, dst.label)
    assert manifest["classes"] == ["QCD", "Tbqq", "Wqq", "Zqq"]
    assert [f["name"] for f in manifest["particle_features"]] == pnames
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"] + manifest["shards"])


def _take(block: EventBlock, order: np.ndarray) -> EventBlock:
    from physfm.data.loader import _take as take

    return take(block, order)


def test_same_input_same_version_and_bytes_changed_config_different(jet_files: list[Path], tmp_path: Path) -> None:
    kw = {"reader_options": {"labels": LABELS}, "progress": False}
    m1, _ = convert("jetclass", [str(p) for p in jet_files], tmp_path / "a", shard_events=100, **kw)
    m2, _ = convert("jetclass", [str(p) for p in jet_files], tmp_path / "b", shard_events=100, **kw)
    assert m1["data_version"] == m2["data_version"]
    for s1, s2 in zip(m1["shards"], m2["shards"], strict=True):
        assert (tmp_path / "a" / s1["path"]).read_bytes() == (tmp_path / "b" / s2["path"]).read_bytes()
    # the same events from renamed copies of the files: same data
    renamed = []
    for i, p in enumerate(jet_files):
        renamed.append(tmp_path / f"copy_{i}.root")
        shutil.copy(p, renamed[-1])
    m3, _ = convert("jetclass", [str(p) for p in renamed], tmp_path / "c", shard_events=100, **kw)
    assert m3["data_version"] == m1["data_version"]
    # any config change gives a different version
    m4, _ = convert("jetclass", [str(p) for p in jet_files], tmp_path / "d", shard_events=77, **kw)
    m5, _ = convert(
        "jetclass",
        [str(p) for p in jet_files],
        tmp_path / "e",
        shard_events=100,
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        **kw,
    )
    m6, _ = convert("jetclass", [str(jet_files[0])], tmp_path / "f", shard_events=100, **kw)
    versions = {m["data_version"] for m in (m1, m4, m5, m6)}
    assert len(versions) == 4


def test_split_assignment_follows_event_content(jet_dataset: Path, jet_files: list[Path], tmp_path: Path) -> None:
    """Each event lands in the same split whatever the file order or sharding."""
    m, _ = convert(
        "jetclass",
        [str(p) for p in reversed(jet_files)],
        tmp_path / "r",
        shard_events=33,
        reader_options={"labels": LABELS},
        progress=False,
    )
    for split in ("train", "val", "test"):
        a = set(open_split(jet_dataset, split).read().event_key.tolist())
        b = set(open_split(tmp_path / "r", split).read().event_key.tolist())
        assert a == b and len(a) > 0
    n = m["n_events"]
    total = sum(n.values())
    assert 0.65 < n["train"] / total < 0.95


def test_generic_root_file_gives_clear_error_naming_file_and_branches(tmp_path: Path) -> None:
    from km3net_testdata import data_path

    path = Path(data_path("dst/mcv5.1.km3_numuCC.ALL.dst.bdt.10events.root"))
    with pytest.raises(DataError) as err:
        convert("jetclass", str(path), tmp_path / "x", progress=False)
    assert (
        path.name in str(err.value)
        and "no TTree or RNTuple named 'tree'" in str(err.value)
        and "E, T" in str(err.value)
    )
    with pytest.raises(DataError) as err:
        convert("jetclass", str(path), tmp_path / "x", reader_options={"tree": "T"}, progress=False)
    msg = str(err.value)
    assert path.name in msg and "missing branches" in msg
    for branch in ("part_px", "part_energy", "jet_sdmass", "label_QCD"):
        assert branch in msg
    assert not (tmp_path / "x").exists()


def test_truncated_root_file_is_refused_by_name(jet_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "truncated.root"
    data = jet_files[0].read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated.root"):
        convert("jetclass", str(bad), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_empty_glob_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no input files match"):
        convert("jetclass", str(tmp_path / "nothing" / "*.root"), tmp_path / "x", progress=False)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("problem", ["nan", "empty"])
def test_bad_events_fail_by_default_and_are_recorded_when_skipped(tmp_path: Path, problem: str, workers: int) -> None:
    kw = {"nan_at": 7} if problem == "nan" else {"empty_at": 7}
    path = _write_jetclass(tmp_path / "bad.root", 50, seed=1, **kw)
    reason = "non-finite" if problem == "nan" else "no particles"
    opts = {"reader_options": {"labels": LABELS}, "workers": workers, "progress": False}
    with pytest.raises(DataError, match=f"bad.root: entry 7: {reason}"):
        convert("jetclass", str(path), tmp_path / "x", **opts)
    m, stats = convert("jetclass", str(path), tmp_path / "y", on_error="skip", **opts)
    assert sum(m["n_events"].values()) == 49
    assert [(s["source"], s["entry"]) for s in m["skipped"]] == [("bad.root", 7)]
    assert reason in m["skipped"][0]["reason"]


@pytest.mark.parametrize("workers", [1, 2])
def test_duplicate_events_across_files_are_caught(tmp_path: Path, workers: int) -> None:
    a = _write_jetclass(tmp_path / "a.root", 40, seed=5)
    b = tmp_path / "b.root"
    shutil.copy(a, b)
    opts = {"reader_options": {"labels": LABELS}, "workers": workers, "step": 15, "progress": False}
    with pytest.raises(DataError, match="duplicate event: b.root entry 0 has the same content as a.root entry 0"):
        convert("jetclass", [str(a), str(b)], tmp_path / "x", **opts)
    m, _ = convert("jetclass", [str(a), str(b)], tmp_path / "y", on_error="skip", **opts)
    assert sum(m["n_events"].values()) == 40 and len(m["skipped"]) == 40
    assert [s["entry"] for s in m["skipped"]] == list(range(40))


def test_output_is_identical_whatever_the_workers_and_chunk_size(tmp_path: Path) -> None:
    """Shards, manifest (data_version, skipped list) are byte-identical for any workers and step."""
    a = _write_jetclass(tmp_path / "in" / "a.root", 700, seed=20, nan_at=123, empty_at=300)
    _write_jetclass(tmp_path / "in" / "b.root", 450, seed=21, empty_at=449)
    shutil.copy(a, tmp_path / "in" / "c.root")  # every good event of a.root again: duplicates
    outputs = []
    for workers, step in [(1, 20_000), (2, 150), (3, 97), (1, 64)]:
        out = tmp_path / f"out_{workers}_{step}"
        m, _ = convert(
            "jetclass",
            str(tmp_path / "in"),
            out,
            shard_events=100,
            reader_options={"labels": LABELS},
            on_error="skip",
            step=step,
            workers=workers,
            progress=False,
        )
        files = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        outputs.append((m, files))
    m0, files0 = outputs[0]
    assert len(m0["skipped"]) == 2 + 1 + 2 + 698 and sum(m0["n_events"].values()) == 698 + 449
    assert [(s["source"], s["entry"]) for s in m0["skipped"][:3]] == [("a.root", 123), ("a.root", 300), ("b.root", 449)]
    for m, files in outputs[1:]:
        assert m == m0
        assert files == files0


def test_verify_catches_a_single_flipped_byte(jet_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(jet_dataset, copy)
    assert verify_dataset(copy) == []
    shard = copy / load_manifest(copy)["shards"][0]["path"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    problems = verify_dataset(copy)
    assert len(problems) == 1 and shard.name in problems[0]
    out = subprocess.run([sys.executable, "-m", "physfm.cli", "verify", str(copy)], capture_output=True, text=True)
    assert out.returncode == 1 and "sha256" in out.stdout
    with pytest.raises(DataError, match="does not verify"):
        load_manifest(copy, verify=True)


def test_killed_conversion_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    files = [_write_jetclass(tmp_path / f"in_{i}.root", 3000, seed=10 + i) for i in range(4)]
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "physfm.cli",
        "convert",
        "--format",
        "jetclass",
        "--input",
        str(tmp_path / "in_*.root"),
        "--out",
        str(out),
        "--config",
        json.dumps({"shard_events": 200, "labels": list(LABELS)}),
        "--step",
        "300",
        "--no-progress",
    ]
    env = {**os.environ, "PHYSFM_TRACKING": "0"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.*.partial/train/shard_*.h5")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed conversion must not leave an output directory"
    subprocess.run(cmd, env=env, check=True)
    m1 = load_manifest(out, verify=True)
    m2, _ = convert(
        "jetclass",
        [str(f) for f in files],
        tmp_path / "ref",
        shard_events=200,
        step=300,
        reader_options={"labels": LABELS},
        progress=False,
    )
    assert m1["data_version"] == m2["data_version"]


def test_loader_pads_truncates_and_covers_each_event_once(jet_dataset: Path) -> None:
    from torch.utils.data import DataLoader

    split = open_split(jet_dataset, "train")
    n = len(split)
    arrays = load_arrays(jet_dataset, "train", ["part_px", "part_energy"], max_len=16)
    assert arrays["x"].shape == (n, 16, 2)
    np.testing.assert_array_equal(arrays["mask"].sum(1), np.minimum(arrays["n_particles"], 16))
    assert np.all(arrays["x"][~arrays["mask"]] == 0)
    block = split.read()
    np.testing.assert_array_equal(
        arrays["x"][0, : arrays["mask"][0].sum(), 0], block.particles[: min(16, block.offsets[1]), 0]
    )
    for workers in (0, 2):
        ds = ShardDataset(
            jet_dataset, "train", features=["log_pt", "deta"], max_len=32, batch_size=25, shuffle=True, seed=1
        )
        seen = []
        for batch in DataLoader(ds, batch_size=None, num_workers=workers):
            assert batch["x"].shape[1:] == (32, 2) and batch["mask"].dtype.is_floating_point is False
            seen.append(batch["label"].numpy())
        assert sum(len(s) for s in seen) == n
        assert np.bincount(np.concatenate(seen), minlength=4).tolist() == np.bincount(block.label, minlength=4).tolist()
    # distributed ranks partition the events
    sizes = [
        sum(len(b["label"]) for b in ShardDataset(jet_dataset, "train", batch_size=10, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert sum(sizes) == n


def test_shard_layout_is_contiguous_ragged(jet_dataset: Path) -> None:
    manifest = load_manifest(jet_dataset)
    with h5py.File(jet_dataset / manifest["shards"][0]["path"]) as f:
        assert f["offsets"][0] == 0 and f["offsets"][-1] == f["particles"].shape[0]
        assert f["particles"].shape[1] == len(PARTICLE_BRANCHES)
        assert f["particles"].chunks is None  # contiguous: a slice is one read


# --------------------------------------------------------------------------- RNTuple inputs (issue 17)
def _as_rntuple(src: Path, dest: Path) -> Path:
    """The events of a TTree file rewritten as an RNTuple: what uproot >= 5.7 writes for ``file["tree"] = {...}``."""
    branches = list(PARTICLE_BRANCHES) + list(JET_BRANCHES) + list(ALL_LABELS)
    arrays = uproot.open(src)["tree"].arrays(branches, library="ak")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(dest) as f:
        f["tree"] = {b: arrays[b] for b in branches}
    assert uproot.open(dest).classnames()["tree;1"] == "ROOT::RNTuple"
    return dest


@pytest.mark.parametrize("workers", [1, 2])
def test_rntuple_and_ttree_of_the_same_events_give_the_same_data(
    jet_files: list[Path], tmp_path: Path, workers: int
) -> None:
    """Real Pythia 8 jets as TTree (physfm generate) and as RNTuple: one data_version, identical shard bytes."""
    assert uproot.open(jet_files[0]).classnames()["tree;1"] == "TTree"
    rntuples = [_as_rntuple(p, tmp_path / "rntuple" / p.name) for p in jet_files]
    kw = {"reader_options": {"labels": LABELS}, "shard_events": 100, "step": 150, "workers": workers, "progress": False}
    m_tree, _ = convert("jetclass", [str(p) for p in jet_files], tmp_path / "from_ttree", **kw)
    m_rnt, _ = convert("jetclass", [str(p) for p in rntuples], tmp_path / "from_rntuple", **kw)
    assert m_rnt["data_version"] == m_tree["data_version"]
    assert sum(m_rnt["n_events"].values()) == sum(m_tree["n_events"].values()) > 0
    for a, b in zip(m_tree["shards"], m_rnt["shards"], strict=True):
        assert (tmp_path / "from_ttree" / a["path"]).read_bytes() == (
            tmp_path / "from_rntuple" / b["path"]
        ).read_bytes()


def test_rntuple_inputs_get_the_same_checks(tmp_path: Path) -> None:
    """Missing branches are named, bad values stop the conversion (or are skipped) by file and entry."""
    bad = _as_rntuple(_write_jetclass(tmp_path / "t" / "bad.root", 50, seed=1, nan_at=7), tmp_path / "r" / "bad.root")
    opts = {"reader_options": {"labels": LABELS}, "progress": False}
    with pytest.raises(DataError, match="bad.root: entry 7: non-finite"):
        convert("jetclass", str(bad), tmp_path / "x", **opts)
    m, _ = convert("jetclass", str(bad), tmp_path / "y", on_error="skip", **opts)
    assert [(s["source"], s["entry"]) for s in m["skipped"]] == [("bad.root", 7)]

    arrays = uproot.open(bad)["tree"].arrays(library="ak")
    partial = tmp_path / "partial.root"
    with uproot.recreate(partial) as f:
        f["tree"] = {b: arrays[b] for b in arrays.fields if b not in ("part_energy", "jet_sdmass")}
    with pytest.raises(DataError) as err:
        convert("jetclass", str(partial), tmp_path / "z", **opts)
    assert "partial.root" in str(err.value) and "missing branches: part_energy, jet_sdmass" in str(err.value)
    with pytest.raises(DataError, match="no TTree or RNTuple named 'jets'"):
        convert("jetclass", str(partial), tmp_path / "z", reader_options={"labels": LABELS, "tree": "jets"})
    assert not any((tmp_path / d).exists() for d in ("x", "z"))
