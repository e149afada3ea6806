"""Jet observables of a JetClass-schema dataset, computed once and cached (issue 18).

The observables (:data:`physfm.data.substructure.NAMES`: m, m_SD, pT, multiplicity, tau1-tau3,
tau21, tau32, pT_D, girth; definitions in :mod:`physfm.data.substructure`) come from the stored
four-momenta ``part_px, part_py, part_pz, part_energy`` of every constituent (all of them: the
load-time ``max_len`` truncation does not apply here).

:func:`write_observables` (the ``physfm observables`` stage) writes ``observables.h5`` beside a
``manifest.json`` keyed by the dataset's ``data_version`` and the definition;
:func:`load_observables` checks both. No label is stored with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import SPLITS, DataError, EventBlock, feature_names
from physfm.data.substructure import DEFINITION, NAMES, jet_observables
from physfm.io import atomic_dir, read_json, sha256_file, sha256_json, write_json

if TYPE_CHECKING:
    from physfm.data.loader import Unit

FILE = "observables.h5"
MANIFEST = "manifest.json"
_MOMENTA = ("part_px", "part_py", "part_pz", "part_energy")


def block_observables(block: EventBlock, manifest: dict[str, Any]) -> np.ndarray:
    """Observables of the events of ``block`` (a jets dataset's shard layout)."""
    if manifest.get("modality") != "jets":
        raise DataError(
            f"jet observables need a jets dataset; this one is modality '{manifest.get('modality')}' "
            "(IceCube studies use LineFit as their zero-label baseline)"
        )
    stored = feature_names(manifest, "particle")
    missing = [c for c in _MOMENTA if c not in stored]
    if missing:
        raise DataError(f"jet observables need the stored columns {', '.join(missing)} (JetClass schema)")
    cols = [block.particles[:, stored.index(c)] for c in _MOMENTA]
    return jet_observables(block.offsets, *cols)


UNIT_EVENTS = 2000  #: events per work unit when computing with several processes


def _unit_values(job: tuple[Unit, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Observables and keys of the events of one unit of a split (:meth:`Split.units`)."""
    unit, manifest = job
    block = unit.read()
    return block_observables(block, manifest), block.event_key.astype(np.uint64)


def iter_split(
    data_dir: Dataset | str | Path,
    split: str,
    indices: np.ndarray | None = None,
    progress: bool = False,
    workers: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(values, event_key)`` of a split's events (or those at the sorted ``indices``), block by block
    of at most ``UNIT_EVENTS`` events in stored order: memory flat in the split's size.

    With ``workers > 1`` the blocks run in that many processes (at most ``2 * workers`` in flight);
    the blocks are the same whatever the number.
    """
    import collections
    import itertools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    from physfm.data.loader import open_split

    s = open_split(data_dir, split)
    jobs = [(u, s.manifest) for u in s.units(UNIT_EVENTS, indices)]
    bar = tqdm(total=sum(len(u) for u, _ in jobs), desc=f"observables {split}", disable=not progress, unit="jet")
    try:
        if workers > 1 and len(jobs) > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                todo = iter(jobs)
                pending = collections.deque(pool.submit(_unit_values, j) for j in itertools.islice(todo, 2 * workers))
                while pending:
                    result = pending.popleft().result()
                    if (job := next(todo, None)) is not None:
                        pending.append(pool.submit(_unit_values, job))
                    bar.update(len(result[1]))
                    yield result
        else:
            for job in jobs:
                result = _unit_values(job)
                bar.update(len(job[0]))
                yield result
    finally:
        bar.close()


def compute_split(
    data_dir: Dataset | str | Path,
    split: str,
    indices: np.ndarray | None = None,
    progress: bool = False,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, event_key)`` of a split's events (or those at the sorted ``indices``), in stored order,
    in memory (:func:`iter_split` streams them). The result is the same whatever ``workers``."""
    results = list(iter_split(data_dir, split, indices, progress, workers))
    if not results:
        return np.zeros((0, len(NAMES))), np.zeros(0, dtype=np.uint64)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


# --------------------------------------------------------------------------- the cache (one per dataset)
def observables_version(data_version: str) -> str:
    """Key of a cache: the dataset's data_version and the observables' definition."""
    return sha256_json({"data_version": data_version, "definition": DEFINITION})[:16]


def write_observables(
    data_dir: Dataset | str | Path,
    out_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Compute the observables of every event of ``splits`` into ``out_dir`` (atomically); return its manifest.

    ``observables.h5`` holds ``{split}/values`` (n, len(NAMES)) float64 and ``{split}/event_key``, in the
    split's stored order; labels are not stored. The files are the same whatever ``workers``.
    """
    ds = open_dataset(data_dir, verify=True)
    data_manifest = ds.manifest
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        with h5py.File(tmp / FILE, "w", libver="earliest", track_order=False) as f:
            for split in splits:
                if split not in data_manifest["n_events"]:
                    continue
                n = ds.n_events[split]  # written block by block: memory flat in the split's size
                values = f.create_dataset(f"{split}/values", shape=(n, len(NAMES)), dtype=np.float64, track_times=False)
                keys = f.create_dataset(f"{split}/event_key", shape=(n,), dtype=np.uint64, track_times=False)
                at = 0
                for v, k in iter_split(ds, split, progress=progress, workers=workers):
                    values[at : at + len(k)], keys[at : at + len(k)] = v, k
                    at += len(k)
                assert at == n, f"{split}: {at} events read, the manifest says {n}"
                counts[split] = n
        manifest = {
            "kind": "physfm-observables",
            "data_version": data_manifest["data_version"],
            "observables_version": observables_version(data_manifest["data_version"]),
            "definition": DEFINITION,
            "n_events": counts,
            "files": {FILE: sha256_file(tmp / FILE)},
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def check_observables(obs_dir: str | Path, data_dir: Dataset | str | Path) -> dict[str, Any]:
    """The cache's manifest, after checking it matches ``data_dir`` and this definition and its file hash."""
    obs_dir = Path(obs_dir)
    if not (obs_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{obs_dir} holds no observables ({MANIFEST} missing); run `physfm observables`")
    manifest = read_json(obs_dir / MANIFEST)
    version = open_dataset(data_dir).data_version
    if manifest.get("data_version") != version or manifest.get("definition") != DEFINITION:
        raise DataError(
            f"observables in {obs_dir} were computed for data_version {manifest.get('data_version')} "
            f"(definition v{manifest.get('definition', {}).get('version')}), but {data_dir} is {version} "
            f"(definition v{DEFINITION['version']}); re-run `physfm observables --data {data_dir} --out {obs_dir}`"
        )
    if sha256_file(obs_dir / FILE) != manifest["files"][FILE]:
        raise DataError(f"{obs_dir / FILE} does not match its manifest (modified?); re-run `physfm observables`")
    return manifest


def load_observables(
    obs_dir: str | Path, data_dir: Dataset | str | Path, split: str, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, event_key)`` of a split (or of its events at the sorted ``indices``) from a checked cache."""
    manifest = check_observables(obs_dir, data_dir)
    if split not in manifest["n_events"]:
        raise KeyError(f"observables in {obs_dir} have no '{split}' split (have {', '.join(manifest['n_events'])})")
    with h5py.File(Path(obs_dir) / FILE, "r") as f:
        values, keys = f[f"{split}/values"][:], f[f"{split}/event_key"][:]
    if indices is not None:
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        values, keys = values[idx], keys[idx]
    return values, keys
