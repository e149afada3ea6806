"""Reader for ROOT files in the JetClass schema (real JetClass or physfm's Pythia 8 output)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from physfm.data.jetclass import ALL_LABELS, JET_BRANCHES, PARTICLE_BRANCHES, TREE_NAME
from physfm.data.readers.base import RawBlock, Reader
from physfm.data.shards import DataError


def _flat(arr: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Content and zero-based offsets of a jagged 1-D-per-event array, without copies if possible."""
    layout = ak.to_layout(arr)
    layout = layout.to_ListOffsetArray64(True)
    offsets = np.asarray(layout.offsets.data)
    content = np.asarray(layout.content.data)[: offsets[-1]]
    return content, offsets


class JetClassReader(Reader):
    """Reads tree ``tree`` with the JetClass branches; labels from the one-hot ``label_*`` branches.

    Options: ``labels`` — the label branches that define the classes, in class-index order
    (default: all ten JetClass labels). Events whose one-hot label is not among them get label -1
    and are counted by the converter as filtered, never silently dropped. ``tree`` — the TTree
    name (default ``tree``).
    """

    modality = "jets"
    file_glob = "*.root"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        labels = self.options.get("labels") or list(ALL_LABELS)
        unknown = [lab for lab in labels if not str(lab).startswith("label_")]
        if unknown:
            raise ValueError(f"label branches must start with 'label_', got {unknown}")
        self._labels = list(labels)
        self._tree_name = str(self.options.get("tree") or TREE_NAME)

    @property
    def particle_features(self) -> dict[str, str]:
        return dict(PARTICLE_BRANCHES)

    @property
    def event_features(self) -> dict[str, str]:
        return dict(JET_BRANCHES)

    @property
    def classes(self) -> list[str]:
        return [lab.removeprefix("label_") for lab in self._labels]

    def _tree(self, path: Path) -> Any:
        try:
            f = uproot.open(path)
        except Exception as exc:  # uproot raises many types for corrupt files
            raise DataError(f"{path}: cannot be read as a ROOT file ({type(exc).__name__}: {exc})") from exc
        size = Path(path).stat().st_size
        if size < f.file.fEND:
            raise DataError(
                f"{path}: truncated ROOT file ({size} bytes on disk, header says {f.file.fEND}); "
                "re-copy or re-generate it"
            )
        classes = {k.split(";")[0]: v for k, v in f.classnames(recursive=False).items()}
        if self._tree_name not in classes:
            trees = [k for k, v in classes.items() if v == "TTree"]
            raise DataError(
                f"{path}: no TTree named '{self._tree_name}' (TTrees in the file: {', '.join(trees) or 'none'}); "
                "a JetClass-schema file has its jets in tree 'tree' (choose another with --tree)"
            )
        if classes[self._tree_name] != "TTree":
            raise DataError(f"{path}: '{self._tree_name}' is a {classes[self._tree_name]}, expected a TTree")
        tree = f[self._tree_name]
        return tree

    def check(self, path: Path) -> int:
        tree = self._tree(path)
        present = set(tree.keys())
        required = list(PARTICLE_BRANCHES) + list(JET_BRANCHES) + self._labels
        missing = [b for b in required if b not in present]
        if missing:
            raise DataError(
                f"{path}: not in the JetClass schema; missing branches: {', '.join(missing)}. "
                "Convert it to the JetClass schema, or choose `--labels` to match its label branches."
            )
        return int(tree.num_entries)

    def read(self, path: Path, step: int) -> Iterator[RawBlock]:
        tree = self._tree(path)
        pnames, enames = list(PARTICLE_BRANCHES), list(JET_BRANCHES)
        entry = 0
        chunks = tree.iterate(pnames + enames + self._labels, step_size=step, library="ak", how=dict)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except Exception as exc:  # corrupt baskets surface as many exception types
                raise DataError(f"{path}: cannot read entries from {entry} on ({type(exc).__name__}: {exc})") from exc
            offsets = None
            cols = []
            for name in pnames:
                content, offs = _flat(chunk[name])
                if offsets is None:
                    offsets = offs
                elif not np.array_equal(offs, offsets):
                    raise DataError(f"{path}: branch {name} has a different particle count than {pnames[0]}")
                cols.append(content)
            dtype = np.result_type(*[c.dtype for c in cols])
            particles = np.empty((len(cols[0]), len(cols)), dtype=dtype)
            for j, c in enumerate(cols):
                particles[:, j] = c
            ecols = [np.asarray(chunk[name]) for name in enames]
            events = np.empty((len(ecols[0]), len(ecols)), dtype=np.result_type(*[c.dtype for c in ecols]))
            for j, c in enumerate(ecols):
                events[:, j] = c
            onehot = np.stack([np.asarray(chunk[name]).astype(np.float64) for name in self._labels], axis=1)
            nset = (onehot != 0).sum(axis=1)
            if np.any(nset > 1):
                bad = int(np.flatnonzero(nset > 1)[0]) + entry
                raise DataError(f"{path}: entry {bad} has more than one of {self._labels} set")
            label = np.where(nset == 1, onehot.argmax(axis=1), -1).astype(np.int64)
            assert offsets is not None
            yield RawBlock(offsets.astype(np.int64), particles, events, label, entry)
            entry += len(label)
