"""Point clouds of the ``lartpc`` modality as model inputs: a deterministic cap on points per event.

A converted LArTPC dataset holds every point of every event (:mod:`physfm.data.lartpc`). The loader
(:func:`physfm.data.loader.pad`) pads each event to ``max_len`` points in stored order, which
groups points by cluster; a model that patches the cloud sees at most ``cap`` of them, drawn by
:func:`cap_points` uniformly at random **from the event key and a salt** (:func:`physfm.hashing.hash_uniform`),
never in stored order (that would drop whole clusters). The same event and salt always give the
same points, whatever the batching, workers or ranks.

``max_len`` must hold the largest event: :func:`check_not_truncated` refuses a batch whose events
were cut by it (silent loss of points), naming the setting to raise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from physfm.hashing import hash_uniform

#: The PoLAr-MAE point inputs: voxel position and log10 voxel energy (physfm.features names).
POINT_INPUTS = ("x", "y", "z", "log_energy")


def check_point_inputs(features: Sequence[str]) -> None:
    """Patching reads x, y, z (voxels) first and an energy feature fourth: refuse other layouts."""
    if list(features[:3]) != ["x", "y", "z"] or len(features) < 4:
        raise ValueError(
            f"point-cloud features must start with x, y, z (voxels) and an energy feature, got {list(features)}; "
            f"use e.g. {list(POINT_INPUTS)}"
        )


def check_not_truncated(n_points: np.ndarray, max_len: int, what: str = "pretrain.max_len") -> None:
    """Raise when an event has more points than the loader's ``max_len`` kept."""
    n_points = np.asarray(n_points)
    if len(n_points) and int(n_points.max()) > max_len:
        raise ValueError(
            f"an event has {int(n_points.max())} points but {what} is {max_len}: the loader would drop "
            f"points in stored order (whole clusters); raise {what} to at least {int(n_points.max())}"
        )


def cap_points(
    points: np.ndarray, mask: np.ndarray, event_key: np.ndarray, cap: int, salt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``cap`` real points of each event, chosen uniformly from (event key, salt).

    ``points (B, L, F)``, ``mask (B, L)`` -> ``(points (B, C, F), mask (B, C), index (B, C))`` with
    ``C = min(cap, L)``; ``index`` gives each kept point's position in the input (0 at padding).
    Kept points stay in their stored order; events with fewer than ``cap`` points keep them all.
    """
    b, length = mask.shape
    c = min(cap, length)
    u = hash_uniform(event_key, salt, length)
    u[~mask] = np.inf
    chosen = np.argsort(u, axis=1, kind="stable")[:, :c]  # the c lowest draws (real points first)
    ok = np.take_along_axis(mask, chosen, axis=1)
    chosen = np.where(ok, chosen, length)  # padding sorts last
    index = np.sort(chosen, axis=1)
    ok = index < length
    index = np.where(ok, index, 0)
    out = np.take_along_axis(points, index[..., None], axis=1) * ok[..., None]
    return out.astype(points.dtype, copy=False), ok, index
