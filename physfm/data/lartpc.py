"""LArTPC modality: the PILArNet-M layout, its semantic classes and the per-point shard columns.

PILArNet-M (the data set of PoLAr-MAE) stores, per HDF5 file, two variable-length float datasets
with one entry per event:

* ``point[i]`` reshapes to ``(N, 8)``: ``x, y, z`` (voxel units, 3 mm voxels), voxel energy (MeV),
  energy deposit (MeV), time, number of electrons, ``dx``. Points are grouped by cluster.
* ``cluster[i]`` reshapes to ``(M, 5)`` (v1) or ``(M, 6)`` (v2): number of points, fragment id,
  group id (the particle instance), interaction id, semantic type and, in v2, the PDG code.
  Row 0 is always the low-energy-deposit cluster; point labels are ``repeat(semantic, n_points)``.

Some copies ship ``<file>_points.npy`` beside each file: the number of points of every event.

A converted ``lartpc`` dataset keeps every point with its eight values and, per point, the labels
of its cluster (:data:`POINT_FEATURES`), all in one float array in the source's float dtype
(float32 for PILArNet-M). The label columns hold whole numbers, exact in float32 up to 2**24
(the reader refuses larger ones rather than round them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

MODALITY = "lartpc"

#: Semantic types of PILArNet-M, by index.
SEMANTIC_CLASSES = ("shower", "track", "michel", "delta", "low_energy")
SHOWER, TRACK, MICHEL, DELTA, LOW_ENERGY = range(5)
#: Supera's voxel-overlap priority: when deposits of several classes share a voxel, the first wins.
OVERLAP_PRIORITY = (TRACK, MICHEL, SHOWER, DELTA, LOW_ENERGY)

#: The eight values of a point, as stored in ``point[i]``, with units.
POINT_COLUMNS = {
    "x": "voxel",
    "y": "voxel",
    "z": "voxel",
    "voxel_energy": "MeV",
    "energy_deposit": "MeV",
    "time": "ns",
    "n_electrons": "",
    "dx": "cm",
}
#: The per-point columns the reader adds from the cluster table (whole numbers).
LABEL_COLUMNS = {
    "semantic": "",  # index into SEMANTIC_CLASSES
    "cluster": "",  # row of the event's cluster table (0 = the low-energy-deposit cluster)
    "fragment_id": "",
    "group_id": "",  # particle instance
    "interaction_id": "",
    "pid": "",  # PDG code (cluster table v2); -1 for v1 files
}
POINT_FEATURES = {**POINT_COLUMNS, **LABEL_COLUMNS}
#: Per-event columns of a converted dataset.
EVENT_FEATURES = {
    "n_clusters": "",  # rows of the cluster table, empty clusters included
    "n_empty_clusters": "",  # clusters without points (their ids are not stored: no point carries them)
    "cluster_columns": "",  # 5 (v1) or 6 (v2)
    "total_energy": "MeV",  # sum of the points' voxel energy
}
#: Columns of the cluster table, in order (``pid`` only in v2).
CLUSTER_COLUMNS = ("n_points", "fragment_id", "group_id", "interaction_id", "semantic", "pid")
CLUSTER_WIDTHS = (5, 6)
#: Voxel pitch of PILArNet-M (cm) and the number of voxels along each side of its cube.
VOXEL_CM = 0.3
N_VOXELS = 768


def write_pilarnet(
    path: str | Path,
    points: Sequence[np.ndarray],
    clusters: Sequence[np.ndarray],
    *,
    dtype: Any = np.float32,
    index: bool = False,
) -> Path:
    """Write events in the PILArNet-M layout, atomically: ``points[i]`` ``(N, 8)``, ``clusters[i]`` ``(M, 5|6)``.

    Each event becomes one flat variable-length ``dtype`` array in ``point`` and in ``cluster``.
    With ``index``, ``<file>_points.npy`` (points per event) is written beside it.
    """
    from physfm.io import atomic_path

    path = Path(path)
    vlen = h5py.vlen_dtype(np.dtype(dtype))
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        for name, arrays in (("point", points), ("cluster", clusters)):
            ds = f.create_dataset(name, shape=(len(arrays),), dtype=vlen, track_times=False)
            for i, a in enumerate(arrays):
                ds[i] = np.asarray(a, dtype=dtype).ravel()
    if index:
        with atomic_path(path.with_name(path.stem + "_points.npy")) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.array([len(p) for p in points], dtype=np.int64))
    return path
