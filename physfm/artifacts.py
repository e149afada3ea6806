"""One on-disk format for every stage output that is not a dataset: write it, open it, verify it.

An artefact is a directory a stage owns: a tokenizer, a backbone, label subsets, a fine-tuned
model, an embedding index, a report. Its ``manifest.json``, written last, is the same for every kind::

    {
      "artifact_format": 1,
      "kind": "backbone",                      # one of KINDS
      "version": "3f2a9c0d5e6b7a81",           # content version, 16 hex digits
      "inputs": {"data_version": "...", "tokenizer_version": "..."},   # versions of what it was made from
      "files": {"backbone.safetensors": "<sha256>", "tokenizer/manifest.json": "<sha256>", ...},
      "records": ["metrics.json"],             # files that record the run (timings): checked, not versioned
      "excluded": ["checkpoints"],             # subdirectories that are not part of the artefact
      "physfm_version": "0.1.0",
      "info": {...}                            # what the kind's loader needs (method, objective, subsets ...)
    }

Downstream stages know an artefact's version as ``<kind>_version`` (``tokenizer_version``,
``backbone_version``, ...), the name it has in their own ``inputs``.

``files`` lists every file of the directory: :func:`open_artifact` (every loader calls it) and
``physfm verify`` refuse a directory where a listed file is missing or changed, or where a file is
not listed, naming each file and the stage to rerun. A subdirectory with its own ``manifest.json``
(the tokenizer a backbone carries) is a nested artefact: listed by its manifest and checked by it.
Hidden names (``.snakemake_timestamp``, which Snakemake puts in every directory output, and the
temporaries of :mod:`physfm.io`) are not part of an artefact.

The **version**, unless the kind computes its own (a tokenizer's content hash, see
:attr:`physfm.tokenizers.base.Tokenizer.version`), is the first 16 hex digits of the sha256 of the
canonical JSON of ``{"kind", "inputs", "files"}``, where ``files`` leaves out the records and nested
artefacts (those enter through ``inputs``): the same inputs and the same bytes give the same version.

Datasets keep the shard format's own manifest (:mod:`physfm.data.shards`); :func:`verify_directory`
checks them too, so ``physfm verify DIR`` takes any directory physfm writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from physfm import __version__
from physfm.data.shards import MANIFEST, DataError, verify_dataset
from physfm.io import read_json, sha256_file, sha256_json, write_json

ARTIFACT_FORMAT = 1

#: kind -> the command that makes it (named in every refusal: rerun it to re-create the artefact).
KINDS: dict[str, str] = {
    "dataset": "physfm convert",
    "tokenizer": "physfm tokenizer fit",
    "backbone": "physfm pretrain",
    "subsets": "physfm subsets",
    "finetuned": "physfm finetune",
    "embeddings": "physfm embed",
    "report": "physfm report",
}

#: Version keys a stage's meta may carry, in the order they are recorded as ``inputs``.
VERSION_KEYS = ("data_version", "tokenizer_version", "backbone_version", "subsets_version")


class ArtifactError(DataError):
    """An artefact directory that is missing, incomplete, of another kind, or changed since written."""


@dataclass(frozen=True)
class Artifact:
    """An artefact directory whose manifest has been read (and its files verified)."""

    path: Path
    kind: str
    version: str
    inputs: dict[str, str]
    files: dict[str, str]
    info: dict[str, Any]
    physfm_version: str


def input_versions(*metas: Mapping[str, Any]) -> dict[str, str]:
    """The :data:`VERSION_KEYS` set in ``metas`` (the first meta that has a key wins; None is skipped)."""
    out: dict[str, str] = {}
    for meta in metas:
        for key in VERSION_KEYS:
            if key not in out and meta.get(key) not in (None, ""):
                out[key] = str(meta[key])
    return out


def content_version(kind: str, inputs: Mapping[str, str], files: Mapping[str, str], records: Sequence[str]) -> str:
    """The default version of an artefact (see the module docstring)."""
    own = {f: h for f, h in files.items() if f not in records and not f.endswith(f"/{MANIFEST}")}
    return sha256_json({"kind": kind, "inputs": dict(inputs), "files": own})[:16]


def _walk(directory: Path, excluded: Sequence[str]) -> list[str]:
    """Every file below ``directory`` but its manifest and hidden names, relative, sorted; a nested
    artefact by its manifest."""
    out = []
    for root, dirs, names in os.walk(directory):
        here = Path(root)
        rel = here.relative_to(directory)
        descend = []
        for d in sorted(dirs):
            sub = (rel / d).as_posix()
            if sub in excluded or d.startswith("."):
                continue
            if (here / d / MANIFEST).is_file():
                out.append(f"{sub}/{MANIFEST}")
            else:
                descend.append(d)
        dirs[:] = descend
        out += [(rel / n).as_posix() for n in names if not n.startswith(".") and (rel / n).as_posix() != MANIFEST]
    return sorted(out)


def write_artifact(
    directory: str | Path,
    kind: str,
    files: Sequence[str] | None,
    inputs: Mapping[str, str | None],
    *,
    version: str | None = None,
    info: Mapping[str, Any] | None = None,
    records: Sequence[str] = (),
    excluded: Sequence[str] = (),
) -> Artifact:
    """Hash ``files`` (paths relative to ``directory``; None: every file in it) and write ``manifest.json``.

    Call it last, once every file is written: the manifest is what makes the directory complete.
    ``inputs``: versions of what the artefact was made from (None values are left out). ``version``:
    the kind's own version; by default :func:`content_version`. ``records``: files that hold
    timings or run ids, checked but not versioned. ``excluded``: subdirectories that are not part of
    the artefact (a backbone's ``checkpoints``). The manifest is written atomically
    (:func:`physfm.io.write_json`); to make the whole directory appear at once, build it in
    :func:`physfm.io.atomic_dir`.
    """
    if kind not in KINDS or kind == "dataset":
        raise ValueError(f"unknown artefact kind '{kind}'; one of {', '.join(k for k in KINDS if k != 'dataset')}")
    directory = Path(directory)
    if (directory / MANIFEST).is_file() and (found := manifest_kind(read_json(directory / MANIFEST))) != kind:
        raise ValueError(f"{directory} holds the manifest of a {found}; write the {kind} into a directory of its own")
    names = _walk(directory, excluded) if files is None else sorted(set(files))
    if unknown := sorted(set(records) - set(names)):
        raise ValueError(f"records {unknown} are not among the artefact's files {names}")
    hashes = {name: sha256_file(directory / name) for name in names}
    clean = {k: str(v) for k, v in inputs.items() if v not in (None, "")}
    manifest = {
        "artifact_format": ARTIFACT_FORMAT,
        "kind": kind,
        "version": version or content_version(kind, clean, hashes, records),
        "inputs": clean,
        "files": hashes,
        "records": sorted(records),
        "excluded": sorted(excluded),
        "physfm_version": __version__,
        "info": dict(info or {}),
    }
    write_json(directory / MANIFEST, manifest)
    return _artifact(directory, manifest)


def _artifact(directory: Path, manifest: dict[str, Any]) -> Artifact:
    return Artifact(
        path=directory,
        kind=manifest["kind"],
        version=manifest["version"],
        inputs=dict(manifest["inputs"]),
        files=dict(manifest["files"]),
        info=dict(manifest["info"]),
        physfm_version=manifest["physfm_version"],
    )


def manifest_kind(manifest: Mapping[str, Any]) -> str:
    """``dataset`` for a shard manifest, else the artefact's kind (``unknown`` when it has none)."""
    return "dataset" if "shards" in manifest else str(manifest.get("kind", "unknown"))


#: Kinds whose version their own code computes (checked by their loader, not recomputed here).
OWN_VERSION = ("tokenizer",)


def verify_artifact(directory: str | Path, manifest: Mapping[str, Any]) -> list[str]:
    """Problems of an artefact directory against its manifest (empty when all is well)."""
    directory = Path(directory)
    if manifest.get("artifact_format") != ARTIFACT_FORMAT:
        return [
            f"{MANIFEST}: artefact format {manifest.get('artifact_format')} is not this physfm's "
            f"({ARTIFACT_FORMAT}); it was written by another physfm version"
        ]
    files: dict[str, str] = manifest["files"]
    problems = []
    for rel, expected in sorted(files.items()):
        p = directory / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif (got := sha256_file(p)) != expected:
            problems.append(f"{rel}: sha256 {got[:12]}… does not match manifest {expected[:12]}…")
        elif rel.endswith(f"/{MANIFEST}"):
            _, _, nested = verify_directory(p.parent)
            problems += [f"{rel.removesuffix(MANIFEST)}{q}" for q in nested]
    unlisted = [rel for rel in _walk(directory, manifest["excluded"]) if rel not in files]
    problems += [f"{rel}: not listed in {MANIFEST} (added after it was written)" for rel in unlisted]
    kind = manifest["kind"]
    version = content_version(kind, manifest["inputs"], files, manifest["records"])
    if kind not in OWN_VERSION and version != manifest["version"]:
        problems.append(f"{MANIFEST}: version does not match its inputs and files (manifest edited?)")
    return problems


def verify_directory(directory: str | Path) -> tuple[str, dict[str, Any], list[str]]:
    """``(kind, manifest, problems)`` of any directory physfm writes: a dataset or an artefact."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return "unknown", {}, [f"{MANIFEST}: missing (not a physfm dataset or artefact, or its writing stopped)"]
    manifest = read_json(path)
    kind = manifest_kind(manifest)
    if kind == "dataset":
        return kind, manifest, verify_dataset(directory, manifest)
    if kind not in KINDS:
        return kind, manifest, [f"{MANIFEST}: unknown kind {kind!r}; not a physfm artefact"]
    return kind, manifest, verify_artifact(directory, manifest)


def open_artifact(directory: str | Path, kind: str) -> Artifact:
    """Read and verify an artefact of ``kind``; raise :class:`ArtifactError` saying what is wrong and
    which stage to rerun (a missing directory or manifest, another kind, or any file problem)."""
    directory = Path(directory)
    remedy = f"`{KINDS[kind]}`"
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such {kind} directory; create it with {remedy}")
    if not (directory / MANIFEST).is_file():
        raise ArtifactError(
            f"{directory} is not a complete {kind}: {MANIFEST} is missing (it is written last, so the directory "
            f"is from an interrupted run, or older than artefact manifests); rerun {remedy} to re-create it"
        )
    found, manifest, problems = verify_directory(directory)
    if found != "dataset" and manifest.get("artifact_format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{directory}/{MANIFEST} is in another manifest layout (artifact_format "
            f"{manifest.get('artifact_format')}, this physfm reads {ARTIFACT_FORMAT}): it was written by another "
            f"physfm version; rerun {remedy} to re-create it"
        )
    if found != kind:
        raise ArtifactError(
            f"{directory}/{MANIFEST} does not describe a {kind} (it describes a {found}); "
            f"pass a {kind} directory made by {remedy}"
        )
    if problems:
        raise ArtifactError(
            f"{directory} does not verify against its {MANIFEST} (corrupt or modified since it was written):\n  "
            + "\n  ".join(problems)
            + f"\nrun `physfm verify {directory}` to list every problem, then rerun {remedy} to re-create it"
        )
    return _artifact(directory, manifest)
