"""A conversion spread over jobs (convert_part per group, then gather_parts) equals one job, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import uproot

from physfm.data.convert import convert
from physfm.data.convert_parts import convert_part, gather_parts, group_files
from physfm.data.shards import DataError, verify_dataset

LABELS = ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]
SETTINGS = {
    "shard_events": 37,  # shards straddle the groups' boundaries
    "split_fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
    "reader_options": {"labels": LABELS},
    "on_error": "skip",
    "step": 29,
    "progress": False,
}


@pytest.fixture(scope="module")
def raw_files(jet_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Pythia jets cut into 5 ROOT files, the last repeating 3 jets of the first (duplicates
    across groups), and one file that is not ROOT (an unreadable file, skipped)."""
    out = tmp_path_factory.mktemp("parts_raw")
    arrays = [uproot.open(p)["tree"].arrays(library="ak") for p in jet_files]
    import awkward as ak

    every = ak.concatenate(arrays)
    cuts = np.linspace(0, len(every), 6).astype(int)
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        piece = every[a:b] if i < 4 else ak.concatenate([every[a:b], every[:3]])
        with uproot.recreate(out / f"jets_{i}.root") as f:
            f["tree"] = {name: piece[name] for name in piece.fields}
    (out / "jets_9.root").write_bytes(b"not a ROOT file")
    return out


def _shards(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*.h5"))}


def _scatter_gather(raw: Path, work: Path, groups: int, workers: int = 1) -> tuple[dict, Path]:
    parts = []
    for g in range(groups):
        part = work / f"part_{g}"
        convert_part("jetclass", raw, part, group=g, groups=groups, workers=workers, **SETTINGS)
        parts.append(part)
    manifest, _ = gather_parts(parts[::-1], work / "data", progress=False)  # any order: sorted by group
    return manifest, work / "data"


def test_groups_of_files_are_contiguous_and_cover_every_file() -> None:
    files = [Path(f"f{i}") for i in range(7)]
    for groups in (1, 2, 3, 7, 9):
        cut = [group_files(files, g, groups) for g in range(groups)]
        assert [f for c in cut for f in c] == files
        assert max(map(len, cut)) - min(map(len, cut)) <= 1
    with pytest.raises(ValueError, match="group"):
        group_files(files, 3, 3)


@pytest.mark.parametrize(("groups", "workers"), [(2, 1), (4, 2), (8, 1)])
def test_parts_gather_to_the_bytes_and_data_version_of_one_job(
    raw_files: Path, tmp_path: Path, groups: int, workers: int
) -> None:
    single, _ = convert("jetclass", raw_files, tmp_path / "single", **SETTINGS)
    gathered, data = _scatter_gather(raw_files, tmp_path / "parts", groups, workers)
    assert gathered["data_version"] == single["data_version"]
    assert json.dumps(gathered, sort_keys=True) == json.dumps(single, sort_keys=True)  # skipped, sources, all
    assert _shards(data) == _shards(tmp_path / "single")
    assert verify_dataset(data) == []
    reasons = [s["reason"] for s in gathered["skipped"]]
    assert sum("duplicate event" in r for r in reasons) == 3, "the duplicate check must span the groups"
    assert any(s["source"] == "jets_9.root" and s["entry"] is None for s in gathered["skipped"])


def test_gather_refuses_missing_or_mismatched_parts(raw_files: Path, tmp_path: Path) -> None:
    for g in range(3):
        convert_part("jetclass", raw_files, tmp_path / f"p{g}", group=g, groups=3, **SETTINGS)
    with pytest.raises(DataError, match="each of the 3 groups exactly once"):
        gather_parts([tmp_path / "p0", tmp_path / "p2"], tmp_path / "data")
    other = {**SETTINGS, "shard_events": 50}
    convert_part("jetclass", raw_files, tmp_path / "q1", group=1, groups=3, **other)
    with pytest.raises(DataError, match="config differ"):
        gather_parts([tmp_path / "p0", tmp_path / "q1", tmp_path / "p2"], tmp_path / "data")
    with pytest.raises(DataError, match="not a conversion part"):
        gather_parts([tmp_path], tmp_path / "data")
    assert not (tmp_path / "data").exists()
