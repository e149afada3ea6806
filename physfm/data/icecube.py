"""IceCube modality: shared constants, detector tables and direction helpers.

Conventions (those of IceCube and of the Kaggle competition):

* ``sensor_id = (string - 1) * 60 + (dom_number - 1)`` for the 86 strings x 60 in-ice DOMs (5160 ids).
* Coordinates in metres, IceCube frame: ``z = 0`` at 1948.07 m depth, ``z`` up.
* ``zenith``/``azimuth`` (rad) give the direction the particle *comes from*; the unit vector
  ``(sin z cos a, sin z sin a, cos z)`` (:func:`direction`) is what the ``direction`` task predicts and
  what the Kaggle metric compares. The particle travels along its negative.

The IceCube-86 geometry and ice-properties tables ship with physfm (``physfm/data/graphnet/``, from
the graphnet project, Apache-2.0; see its NOTICE.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MODALITY = "icecube"
N_STRINGS, DOMS_PER_STRING = 86, 60
N_SENSORS = N_STRINGS * DOMS_PER_STRING  # 5160, the Kaggle vocabulary
Z_ORIGIN_DEPTH = 1948.07  # m: depth of the IceCube coordinate origin below the ice surface

#: Per-pulse columns of every IceCube-modality dataset, with units (stored as float64: lossless).
PULSE_FEATURES = {
    "sensor_id": "",
    "time": "ns",
    "charge": "pe",
    "auxiliary": "",
    "x": "m",
    "y": "m",
    "z": "m",
}
#: Per-event columns every reader provides first (readers append their extra truth columns).
TRUTH_FEATURES = {
    "event_id": "",
    "azimuth": "rad",
    "zenith": "rad",
    "dir_x": "",
    "dir_y": "",
    "dir_z": "",
    "n_pulses": "",
    "total_charge": "pe",
}
#: Names of the columns of the per-dataset geometry table (``geometry.csv`` extra).
GEOMETRY_COLUMNS = ("sensor_id", "x", "y", "z")

_PACKAGE_DATA = Path(__file__).resolve().parent / "graphnet"
IC86_GEOMETRY = _PACKAGE_DATA / "geometry_tables" / "icecube" / "icecube86.parquet"
ICE_PROPERTIES = _PACKAGE_DATA / "ice_properties" / "ice_transparency.parquet"


def kaggle_sensor_id(string: np.ndarray, dom_number: np.ndarray) -> np.ndarray:
    """Kaggle/IceCube in-ice sensor index of (string 1..86, DOM 1..60)."""
    return (np.asarray(string, dtype=np.int64) - 1) * DOMS_PER_STRING + (np.asarray(dom_number, dtype=np.int64) - 1)


def direction(azimuth: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    """Unit vectors ``(N, 3)`` pointing to where the particle comes from."""
    azimuth, zenith = np.asarray(azimuth, dtype=np.float64), np.asarray(zenith, dtype=np.float64)
    s = np.sin(zenith)
    return np.stack([s * np.cos(azimuth), s * np.sin(azimuth), np.cos(zenith)], axis=-1)


def angles(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth in [0, 2pi), zenith in [0, pi]) of ``(N, 3)`` vectors (need not be normalised)."""
    v = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1)
    zenith = np.arccos(np.clip(v[..., 2] / np.maximum(norm, 1e-300), -1.0, 1.0))
    azimuth = np.mod(np.arctan2(v[..., 1], v[..., 0]), 2 * np.pi)
    return azimuth, zenith


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (rad) between corresponding rows of two ``(N, 3)`` arrays of direction vectors.

    Uses ``atan2(|a x b|, a . b)``, accurate at small and large angles, for unnormalised inputs too.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def load_ic86_geometry() -> dict[str, np.ndarray]:
    """The in-ice DOMs of IceCube-86 (5083 listed), sorted by Kaggle ``sensor_id``.

    Returns arrays ``sensor_id, string, dom_number, x, y, z, rde`` (rde = relative quantum
    efficiency: 1.0 standard, 1.35 for the DeepCore high-QE PMTs; missing values set to 1).
    """
    import pandas as pd

    g = pd.read_parquet(IC86_GEOMETRY).reset_index(drop=True)
    g = g[(g["dom_type"] == 20) & (g["dom_number"] <= DOMS_PER_STRING)]
    sid = kaggle_sensor_id(g["string"].to_numpy(), g["dom_number"].to_numpy())
    order = np.argsort(sid, kind="stable")
    rde = g["rde"].to_numpy(dtype=np.float64)
    return {
        "sensor_id": sid[order],
        "string": g["string"].to_numpy(dtype=np.int64)[order],
        "dom_number": g["dom_number"].to_numpy(dtype=np.int64)[order],
        "x": g["dom_x"].to_numpy(dtype=np.float64)[order],
        "y": g["dom_y"].to_numpy(dtype=np.float64)[order],
        "z": g["dom_z"].to_numpy(dtype=np.float64)[order],
        "rde": np.where(np.isfinite(rde), rde, 1.0)[order],
    }


def load_ice_properties() -> dict[str, np.ndarray]:
    """South Pole ice table: ``depth`` (m, increasing), ``scattering_len``, ``absorption_len`` (m)."""
    import pandas as pd

    t = pd.read_parquet(ICE_PROPERTIES).sort_values("depth")
    return {k: t[k].to_numpy(dtype=np.float64) for k in ("depth", "scattering_len", "absorption_len")}


def read_csv_exact(path: str | Path) -> Any:
    """``pandas.read_csv`` with floats parsed exactly (round trip), on pandas 2 and 3."""
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3:
        return pd.read_csv(path, float_precision="round_trip")
    return pd.read_csv(path)  # pandas 3 parses floats exactly by default


def read_geometry(data_dir: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The geometry table stored once with an IceCube-modality dataset (``extras.geometry``)."""
    from physfm.data.shards import DataError, load_manifest

    manifest = manifest if manifest is not None else load_manifest(data_dir)
    entry = manifest.get("extras", {}).get("geometry")
    if manifest.get("modality") != MODALITY or entry is None:
        raise DataError(f"{data_dir} is not an IceCube-modality dataset with a stored geometry table")
    g = read_csv_exact(Path(data_dir) / entry["path"])
    return {c: g[c].to_numpy() for c in g.columns}


def n_sensors(data_dir: str | Path, manifest: dict[str, Any] | None = None) -> int:
    """Size of the DOM vocabulary of a dataset: largest stored sensor id + 1 (5160 for IceCube-86)."""
    return int(read_geometry(data_dir, manifest)["sensor_id"].max()) + 1


#: How readers order the pulses of an event in the shards (``order`` reader option).
PULSE_ORDERS = ("nonaux_first", "time", "file")


def pulse_order(offsets: np.ndarray, time: np.ndarray, auxiliary: np.ndarray, order: str) -> np.ndarray | None:
    """Row permutation that puts each event's pulses in the requested order (``None`` = keep as is).

    ``nonaux_first`` (default): non-auxiliary pulses by time, then auxiliary pulses by time, so that
    truncating a sequence to its first ``L`` pulses (the loader's ``max_len``) keeps the
    non-auxiliary ones, as PolarBERT's subsampling does. ``time``: by time. ``file``: source order.
    Ties keep the source order (stable sort).
    """
    if order not in PULSE_ORDERS:
        raise ValueError(f"pulse order must be one of {PULSE_ORDERS}, got '{order}'")
    if order == "file":
        return None
    event = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    time_sorted = bool(np.all((np.diff(time) >= 0) | (np.diff(event) != 0)))  # e.g. Kaggle files
    if order == "time":
        perm = None if time_sorted else np.lexsort((time, event))
    elif time_sorted:  # a stable partition per event suffices (integer radix sort: fast)
        perm = np.argsort(event * 2 + (auxiliary != 0), kind="stable")
    else:
        perm = np.lexsort((time, auxiliary != 0, event))
    return None if perm is None or np.array_equal(perm, np.arange(len(perm))) else perm


def event_sums(offsets: np.ndarray, charge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-event pulse count and total charge."""
    counts = np.diff(offsets)
    total = np.zeros(len(counts), dtype=np.float64)
    filled = counts > 0
    if filled.any():  # starts of non-empty events are strictly increasing; the last one runs to the end
        total[filled] = np.add.reduceat(np.asarray(charge, dtype=np.float64), offsets[:-1][filled])
    return counts.astype(np.float64), total
