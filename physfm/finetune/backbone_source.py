"""Where a fine-tuning backbone comes from, and what it needs of the data it is fine-tuned on.

``physfm finetune --backbone`` (and :func:`physfm.finetune.train.prepare_backbone`) take:

* a backbone directory of this study (``results/<study>/pretrain/<name>``);
* a backbone directory of another study, or copied from elsewhere: the same thing, any path;
* an MLflow model-registry URI ``models:/<name>/<version>`` (``<version>`` a number, ``latest`` or
  ``@alias``). Pretraining registers every backbone as ``<study>.<backbone>``
  (:func:`physfm.tracking.register_backbone`). The version's files are downloaded once into
  ``{PHYSFM_RESULTS}/registry/<name>/v<version>`` and reused; each load verifies them.

Whatever the source, the backbone is opened with :func:`physfm.pretrain.checkpoints.load_backbone`:
every file's sha256 is checked against its ``manifest.json`` (the tokenizer it carries, a nested
artefact, by its own), and a registry copy must also have the ``backbone_version`` the registry
recorded when it was registered. Its feature list, normalisation and ``max_len`` (``backbone.json``)
are what the downstream data is read with; nothing is refitted on the downstream set.

**Missing inputs.** A converted data set names the optional inputs it lacks (its manifest's
``missing_inputs``: charge, particle ID, impact parameters, absent or all zero; their stored values
are zeros). When the backbone reads features of such a group, :func:`input_fill` decides:

* the backbone was pretrained with feature dropout over that group (``backbone.json``
  ``feature_dropout``): its convention is applied, the whole dropout block set to a raw zero (as
  pretraining did for a dropped jet), in training and in evaluation alike;
* otherwise the run is refused with a message saying why and what to do, unless the user allows it
  (``finetune.allow_missing_inputs`` / ``--allow-missing-inputs``): then the lacking features are
  zero-filled and the run says that it was allowed;
* ``scratch`` trains fresh weights on the inputs as they are (nothing to refuse); it is recorded too.

The decision is ``meta["input_fill"]``: saved with the fine-tuned model, applied by
:func:`physfm.models.backbone.normalize`, logged to MLflow and carried into the evaluation record.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from physfm.artifacts import ArtifactError
from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import DataError
from physfm.features import available, input_group

REGISTRY_SCHEME = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+|latest)|@(?P<alias>[A-Za-z0-9_-]+))$")


class MissingInputsError(ValueError):
    """The data set lacks inputs the backbone reads, and the backbone never learnt to do without them."""


@dataclass(frozen=True)
class BackboneSource:
    """A resolved ``--backbone``: where it was asked for and the local directory it was opened from."""

    spec: str  # as given: a path, a models:/ URI or "none"
    kind: str  # "none", "directory" or "registry"
    path: Path | None  # the local backbone directory (None for "none")
    name: str | None = None  # registry: model name
    version: str | None = None  # registry: model version (a number, also for latest/@alias)
    run_id: str | None = None  # registry: the pretraining run that registered it
    registered_version: str | None = None  # registry: the backbone_version recorded at registration

    def __str__(self) -> str:  # where it is read from: the local directory (or "none")
        return "none" if self.path is None else str(self.path)

    def __fspath__(self) -> str:
        return str(self)

    def record(self) -> dict[str, Any]:
        """What is logged about the source (MLflow tags, model meta, evaluation record)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if v is not None}


def parse_registry_uri(uri: str) -> tuple[str, str]:
    """``(name, version)`` of ``models:/<name>/<version>``; version ``@alias`` for ``models:/<name>@alias``."""
    m = _URI.match(uri)
    if m is None:
        raise ValueError(
            f"--backbone {uri}: not a model-registry URI physfm reads; use models:/<name>/<version> "
            "(version a number or 'latest', e.g. models:/default.mpm/1) or models:/<name>@<alias>"
        )
    return m["name"], m["version"] or f"@{m['alias']}"


def _registry_cache(name: str, version: str) -> Path:
    from physfm.tracking import results_dir

    return results_dir() / "registry" / name / f"v{version}"


def _from_registry(uri: str) -> BackboneSource:
    from physfm import tracking
    from physfm.io import atomic_dir

    name, version = parse_registry_uri(uri)
    found = tracking.registered_backbone(name, version)
    if "error" in found:
        raise LookupError(f"--backbone {uri}: {found['error']}")
    version = found["version"]
    cache = _registry_cache(name, version)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not (cache / "manifest.json").is_file():
        with atomic_dir(cache) as tmp:
            got = tracking.registered_backbone(name, version, dst=tmp)
            if "error" in got:
                raise LookupError(f"--backbone {uri}: {got['error']}")
            src = Path(got["path"])
            if src != tmp:  # the artifact directory is downloaded into dst/<its name>
                for item in src.iterdir():
                    item.rename(tmp / item.name)
                src.rmdir()
    registered = found["tags"].get("backbone_version")
    return BackboneSource(uri, "registry", cache, name, version, found.get("run_id"), registered)


def resolve(spec: str | Path | BackboneSource | None) -> BackboneSource:
    """The backbone ``spec`` names: ``None``/``"none"``, a backbone directory, or a ``models:/`` URI.

    A registry URI is looked up and its files downloaded (once); a directory is only checked to
    exist. :func:`load` verifies either. Raises with what is wrong and how to fix it.
    """
    if isinstance(spec, BackboneSource):
        return spec
    if spec is None or str(spec) == "none":
        return BackboneSource("none", "none", None)
    text = str(spec)
    if text.startswith(REGISTRY_SCHEME) or text.startswith("models:"):
        return _from_registry(text)
    if "://" in text or text.startswith("runs:/"):
        raise ValueError(
            f"--backbone {text}: not a backbone physfm reads; pass a backbone directory (physfm pretrain), "
            "a registry URI models:/<name>/<version>, or 'none'"
        )
    path = Path(text)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--backbone {path}: no such directory; pass a backbone directory written by `physfm pretrain` "
            "(of this or another study), a registry URI models:/<name>/<version>, or 'none'"
        )
    return BackboneSource(text, "directory", path)


def load(spec: str | Path | BackboneSource) -> tuple[Any, dict[str, Any]]:
    """``(backbone, meta)`` of a backbone source, verified on load; ``meta["source"]`` says where it came
    from and ``meta["tokenizer_dir"]`` is the verified tokenizer it carries (None without one)."""
    from physfm.pretrain.checkpoints import load_backbone

    source = resolve(spec)
    if source.path is None:
        raise ValueError("load() needs a backbone, got 'none'")
    if source.kind != "registry":
        model, meta = load_backbone(source.path, map_location="cpu")
    else:
        from physfm.tracking import tracking_uri

        try:
            model, meta = load_backbone(source.path, map_location="cpu")
        except ArtifactError as exc:
            raise ArtifactError(
                f"--backbone {source.spec}: the registered backbone's files do not verify (changed in the store "
                f"{tracking_uri()}, or in its local copy {source.path}); delete {source.path} to download it "
                f"again, and re-register the backbone (`physfm pretrain`) if the store's copy is the changed one.\n"
                f"{exc}"
            ) from exc
        if source.registered_version and meta["backbone_version"] != source.registered_version:
            raise ArtifactError(
                f"--backbone {source.spec}: its files give backbone_version {meta['backbone_version']}, but the "
                f"registry recorded {source.registered_version} when it was registered: the files were replaced "
                f"after registration; delete {source.path} and re-register the backbone with `physfm pretrain`"
            )
    tok = source.path / "tokenizer"
    meta = {**meta, "source": source.record(), "tokenizer_dir": str(tok) if (tok / "manifest.json").is_file() else None}
    return model, meta


# --------------------------------------------------------------------------- inputs the data lacks
def missing_groups(data: Dataset | str | Path) -> list[str]:
    """The optional input groups the data set lacks: its manifest's ``missing_inputs`` or, for a data
    set converted before manifests recorded it, found by reading its shards once."""
    ds = open_dataset(data)
    recorded = ds.manifest.get("missing_inputs")
    if recorded is not None:
        return list(recorded["groups"])
    from physfm.data.convert import missing_inputs
    from physfm.data.loader import read_block
    from physfm.data.readers import READERS

    fmt = ds.manifest.get("config", {}).get("format")
    if fmt not in READERS:
        return []
    reader = READERS[fmt](ds.manifest["config"].get("reader_options"))
    if not reader.input_groups:
        return []
    columns = ds.feature_names("particle")
    nonzero = np.zeros(len(columns), dtype=bool)
    for shard in ds.manifest["shards"]:
        nonzero |= (read_block(ds.path / shard["path"]).particles != 0).any(axis=0)
    return list(missing_inputs(reader, columns, nonzero, {})["groups"])


def input_fill(
    meta: dict[str, Any], data: Dataset | str | Path, *, mode: str, allow_missing_inputs: bool = False
) -> dict[str, Any]:
    """How the backbone described by ``meta`` is fed the data set ``data`` (see the module docstring):
    ``{"data_lacks", "features", "fill", "reason", "backbone_feature_dropout"}``; ``features`` are the
    backbone features set to a raw zero. Raises :class:`MissingInputsError` when the run must be refused,
    :class:`~physfm.data.shards.DataError` when the data set cannot give a feature at all."""
    ds = open_dataset(data)
    features = list(meta["features"])
    if meta.get("modality") and meta["modality"] != ds.modality:
        raise DataError(
            f"{ds.path} is a {ds.modality} data set; the backbone was pretrained on {meta['modality']} data"
        )
    if unknown := [f for f in features if f not in available(ds.manifest)]:
        raise DataError(
            f"{ds.path} cannot give the backbone's inputs {unknown} (its columns: "
            f"{', '.join(ds.feature_names('particle'))}); convert the data set in the backbone's schema"
        )
    lacks = missing_groups(ds)
    used = {f: input_group(f) for f in features}
    lacking = [f for f, g in used.items() if g is not None and g in lacks]
    dropout = meta.get("feature_dropout") or {}
    p = float(dropout.get("p", 0.0))
    record: dict[str, Any] = {
        "data_lacks": lacks,
        "features": [],
        "fill": "zero",
        "reason": "complete",
        "backbone_feature_dropout": p,
    }
    if not lacking:
        return record
    groups = sorted({str(used[f]) for f in lacking})
    if mode == "scratch":
        return {**record, "features": lacking, "reason": "scratch"}
    if p > 0 and set(groups) <= set(dropout.get("groups", [])):
        block = [f for f in features if f in set(dropout.get("features", []))]
        return {**record, "features": block, "reason": "feature_dropout"}
    if allow_missing_inputs:
        return {**record, "features": lacking, "reason": "allowed_by_user"}
    name = (meta.get("source") or {}).get("spec") or "the backbone"
    raise MissingInputsError(
        f"{ds.path} lacks the input group(s) {', '.join(groups)} (manifest missing_inputs: absent or all zero), "
        f"but {name} reads {', '.join(lacking)} and was pretrained without feature dropout over them "
        f"(pretrain.feature_dropout = {p}{', groups ' + ', '.join(dropout.get('groups', [])) if p else ''}): "
        "it never saw them absent, and zeros would be out of distribution. Pretrain a backbone with "
        "pretrain.feature_dropout > 0, or pass --allow-missing-inputs (finetune.allow_missing_inputs: true) "
        "to fill them with zeros anyway (the run records it)."
    )


def open_backbone(
    spec: str | Path | BackboneSource, data: Dataset | str | Path, *, mode: str, allow_missing_inputs: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The one call of the fine-tuning loop: :func:`load` the backbone and attach :func:`input_fill`."""
    model, meta = load(spec)
    return model, {**meta, "input_fill": input_fill(meta, data, mode=mode, allow_missing_inputs=allow_missing_inputs)}


def input_fill_tags(fill: dict[str, Any] | None) -> dict[str, str]:
    """MLflow tags of an :func:`input_fill` record (none for a run without one)."""
    if not fill:
        return {}
    return {
        "inputs.data_lacks": ",".join(fill["data_lacks"]) or "none",
        "inputs.filled": ",".join(fill["features"]) or "none",
        "inputs.fill_reason": fill["reason"],
        "inputs.backbone_feature_dropout": str(fill["backbone_feature_dropout"]),
    }
