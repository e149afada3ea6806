# Helpers shared by the stage files (config validation, paths, tracking).
import json
from pathlib import Path

from snakemake.utils import min_version, validate

from physfm.data.generate_icecube import IceCubeGenConfig
from physfm.data.generate_jets import DIJET_KEYS, DIJET_PROCESSES, JetGenConfig
from physfm.data.generate_lartpc import LArTPCGenConfig
from physfm.finetune import grid
from physfm.paths import check_config_path
from physfm.tracking import configure as configure_tracking
from physfm.tracking import init_store as init_tracking_store

min_version("9.0")


validate(config, "../schemas/config.schema.yaml", set_default=True)

STUDY = config["study"]
RESULTS = str(check_config_path(config["results"], "results", allow_absolute=config["allow_absolute_paths"]))
if config["data"]["input"]:
    check_config_path(config["data"]["input"], "data.input", allow_absolute=config["allow_absolute_paths"])
R = f"{RESULTS}/{STUDY}"
# downstream sets (config `downstream`): each converted into results/<study>/downstream/<name>/data, with its own grid
DOWNSTREAM = grid.downstream_sets(config)
DSR = f"{R}/downstream"
for _name, _spec in DOWNSTREAM.items():
    if _spec["data"]["input"]:
        check_config_path(_spec["data"]["input"], f"downstream.{_name}.data.input", allow_absolute=config["allow_absolute_paths"])
    # the merged section is validated like the study's own data section (types, enums, defaults)
    _check = {"data": _spec["data"]}
    validate(_check, "../schemas/config.schema.yaml", set_default=True)
    _spec["data"] = _check["data"]

# MLflow: every job logs to the same store and experiment (see physfm/tracking.py);
# configure() exports PHYSFM_RESULTS and PHYSFM_EXPERIMENT to the jobs.
configure_tracking(results=RESULTS, experiment=config["tracking"]["experiment"] or STUDY)


def track(rule_name, wildcards=None):
    """Tags each stage's MLflow run with its rule name and wildcards; a downstream set's jobs also get downstream=<name>."""
    tags = [f"--tag rule={rule_name}", f"--tag study={STUDY}"]
    for key, value in dict(wildcards or {}).items():
        tags.append(f"--tag wildcard.{key}={value}")
    if "ds" in dict(wildcards or {}):
        tags.append(f"--tag downstream={wildcards.ds}")
    return " ".join(tags)


def raw_input(data=None, raw_dir=None):
    """Raw events of a data section (the study's `data`, or a downstream set's): what the `generate` job
    writes into raw_dir (default the study's raw/), or the user's files."""
    data = data or config["data"]
    if data["source"] == "generate":
        return raw_dir or f"{R}/raw"
    if not data["input"]:
        raise ValueError("config data.input must name raw files when data.source is 'files'")
    return []


def raw_path(data, input):
    """The --input of convert for a data section: the generated directory, or the user's glob."""
    return input[0] if data["source"] == "generate" else data["input"]


def raw_argument(wildcards, input):
    """The --input of the study's convert jobs."""
    return raw_path(config["data"], input)


# the simulator writing each format (IceCube formats: simulate in the Kaggle layout), and its settings
SIMULATORS = {"jetclass": ("jets", JetGenConfig), "pilarnet": ("lartpc", LArTPCGenConfig)}


def simulator(data):
    """(`physfm generate` subcommand, settings dataclass) of a data section's format."""
    if data["source"] == "generate" and data["format"] == "prometheus":
        raise ValueError("data.source 'generate' simulates IceCube events in the Kaggle layout: set data.format: kaggle")
    return SIMULATORS.get(data["format"], ("icecube", IceCubeGenConfig))


def generator_settings(data):
    """The generate job's --config: the keys of this generator only (an IceCube setting does not regenerate
    jets), less an empty process-weight list (an even split, as before weights existed)."""
    fields = simulator(data)[1].__dataclass_fields__
    gen = data["generate"]
    dijet = bool(set(gen.get("processes", [])) & set(DIJET_PROCESSES))  # the dijet keys only for a dijet sample
    keep = [k for k in fields if (k != "weights" or gen.get(k)) and (k not in DIJET_KEYS or dijet)]
    return json.dumps({k: gen[k] for k in keep}, sort_keys=True)


def convert_settings(data):
    """The convert job's --config: label branches exist in JetClass files only; `groups` is the rules'
    business, not the converter's."""
    conv = data["convert"]
    keep = {k: v for k, v in conv.items() if (k != "labels" or data["format"] == "jetclass") and (k != "event_branches" or v)}
    return json.dumps(keep, sort_keys=True)


def parent_dir(wildcards, output):
    return str(Path(output[0]).parent)


ALL_TARGETS = [f"{R}/summary/summary.json"]


def dataset_dir(name):
    """The dataset of a set named in a downstream entry's evaluate_on: the study's corpus or a downstream set."""
    return f"{R}/data" if name == grid.CORPUS else f"{DSR}/{name}/data"


def observables_dir(name):
    """The jet observables (physfm observables) of the set `name` (see dataset_dir)."""
    return f"{R}/observables" if name == grid.CORPUS else f"{DSR}/{name}/observables"


def downstream_backbone(ds, backbone):
    """A downstream cell's backbone input: this study's pretrain/<name>, another study's directory, or none
    for a models:/ URI (the job downloads and verifies it)."""
    source = DOWNSTREAM[ds]["backbones"][backbone]
    if source is None:
        return f"{R}/pretrain/{backbone}"
    return [] if source.startswith("models:/") else source


# the head's side inputs (finetune.head.inputs, physfm/finetune/head_inputs.py): the jet observables come from
# the observables stage's cache of the set trained or scored on; LineFit is computed in the job (no input)
def head_observables(path):
    """The observables input of a cell's job: `path` when the head reads the jet observables, else none."""
    return [path] if "observables" in config["finetune"]["head"].get("inputs", []) else []


def observables_arg(wc, input):
    """The --observables flag of a finetune/evaluate job (empty when its head reads no observables)."""
    observables = getattr(input, "observables", None)  # a reused rule may not have the input
    return f"--observables {observables}" if observables else ""
