"""A converted dataset, opened once: its directory, its parsed manifest and its splits.

Every stage opens its input dataset once (:func:`open_dataset`, verifying the shards' sha256 at
entry when asked) and passes the :class:`Dataset` object on; the loaders, subsets and features take
it instead of a path, so ``manifest.json`` is read and parsed once per stage, not by each helper.
Functions that accept a dataset also accept a path, which they open (without verification).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from physfm.data.shards import DataError, feature_names, load_manifest, verify_dataset


@dataclass(frozen=True)
class Dataset:
    """A dataset directory and its manifest (format version, features, classes, splits, shards)."""

    path: Path
    manifest: dict[str, Any]
    verified: bool = False  # every shard re-hashed against the manifest when it was opened

    @property
    def data_version(self) -> str:
        return str(self.manifest["data_version"])

    @property
    def modality(self) -> str:
        return str(self.manifest["modality"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes") or [])

    @property
    def n_events(self) -> dict[str, int]:
        return dict(self.manifest["n_events"])

    def feature_names(self, kind: str = "particle") -> list[str]:
        return feature_names(self.manifest, kind)

    def shards(self, split: str) -> list[tuple[Path, int]]:
        """``(path, n_events)`` of each shard of ``split``, in order."""
        if split not in self.manifest["n_events"]:
            raise KeyError(f"no split '{split}' in {self.path} (splits: {', '.join(self.manifest['n_events'])})")
        return [(self.path / s["path"], int(s["n_events"])) for s in self.manifest["shards"] if s["split"] == split]

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # a Dataset goes wherever a dataset path does
        return str(self.path)


def open_dataset(data: Dataset | str | Path, verify: bool = False) -> Dataset:
    """The dataset at ``data`` (a directory, or an already opened :class:`Dataset`, returned as is).

    With ``verify``, every shard is re-hashed once (unless this object was already verified) and a
    changed or missing shard raises :class:`DataError` naming it.
    """
    if isinstance(data, Dataset):
        if verify and not data.verified:
            if problems := verify_dataset(data.path, data.manifest):
                raise DataError(
                    f"{data.path} does not verify against its manifest.json:\n  "
                    + "\n  ".join(problems)
                    + f"\nrun `physfm verify {data.path}`, then re-create it with `physfm convert`"
                )
            return replace(data, verified=True)
        return data
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"{path}: no such dataset directory (make one with `physfm convert`)")
    return Dataset(path, load_manifest(path, verify=verify), verified=verify)
