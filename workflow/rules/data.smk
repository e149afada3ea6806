# Stage 1: raw events -> sharded HDF5 with a data_version, and a data summary.
# Each job gets its config section as one JSON document (--config); see physfm/stage.py.
import json

from physfm.data.generate_icecube import IceCubeGenConfig
from physfm.data.generate_jets import JetGenConfig
from physfm.data.generate_lartpc import LArTPCGenConfig

GEN = config["data"]["generate"]
if config["data"]["source"] == "generate" and config["data"]["format"] == "prometheus":
    raise ValueError("data.source 'generate' simulates IceCube events in the Kaggle layout: set data.format: kaggle")
# the simulator writing each format (IceCube formats: simulate in the Kaggle layout), and its settings
SIMULATORS = {"jetclass": ("jets", JetGenConfig), "pilarnet": ("lartpc", LArTPCGenConfig)}
SIM_NAME, SIM_CONFIG = SIMULATORS.get(config["data"]["format"], ("icecube", IceCubeGenConfig))


rule generate:
    output:
        directory(f"{R}/raw"),
    params:
        what=SIM_NAME,
        # the keys of this generator only: an IceCube setting does not regenerate jets
        config=json.dumps({k: GEN[k] for k in SIM_CONFIG.__dataclass_fields__}, sort_keys=True),
        track=track("generate"),
    threads: 2
    log:
        f"{R}/logs/generate.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm generate {params.what} --out {output} --config {params.config:q} --workers {threads} "
        "{params.track} > {log} 2>&1"


CONVERT = config["data"]["convert"]
CONVERT_GROUPS = CONVERT["groups"]
# label branches exist in JetClass files only; `groups` is the rules' business, not the converter's
CONVERT_SETTINGS = json.dumps(
    {k: v for k, v in CONVERT.items() if k != "labels" or config["data"]["format"] == "jetclass"},
    sort_keys=True,
)


if CONVERT_GROUPS == 1:

    rule convert:
        input:
            raw_input(),
        output:
            directory(f"{R}/data"),
        params:
            input=raw_argument,
            format=config["data"]["format"],
            config=CONVERT_SETTINGS,
            track=track("convert"),
        threads: 2
        log:
            f"{R}/logs/convert.log",
        conda:
            "../../envs/io.yaml"
        shell:
            "physfm convert --format {params.format} --input '{params.input}' --out {output} "
            "--config {params.config:q} --workers {threads} {params.track} > {log} 2>&1"

else:
    # Scatter: one job per group of input files (one sbatch job each on the SLURM profile) reads and
    # prepares its files into a part; gather: one job writes the shards, manifest and data_version,
    # byte-identical to the single job above (physfm/data/convert_parts.py).

    rule convert_part:
        input:
            raw_input(),
        output:
            temp(directory(f"{R}/convert_parts/part_{{group}}")),
        wildcard_constraints:
            group=r"\d+",
        params:
            input=raw_argument,
            format=config["data"]["format"],
            config=CONVERT_SETTINGS,
            track=lambda wildcards: track("convert_part", wildcards),
        threads: 2
        log:
            f"{R}/logs/convert_part/{{group}}.log",
        conda:
            "../../envs/io.yaml"
        shell:
            "physfm convert --format {params.format} --input '{params.input}' --out {output} "
            "--config {params.config:q} --group {wildcards.group} --workers {threads} {params.track} "
            "> {log} 2>&1"

    rule convert:
        input:
            expand(f"{R}/convert_parts/part_{{group}}", group=range(CONVERT_GROUPS)),
        output:
            directory(f"{R}/data"),
        params:
            parts=lambda wildcards, input: " ".join(f"--part {p}" for p in input),
            track=track("convert"),
        log:
            f"{R}/logs/convert.log",
        conda:
            "../../envs/io.yaml"
        shell:
            "physfm convert-gather {params.parts} --out {output} {params.track} > {log} 2>&1"


rule summarize:
    input:
        f"{R}/data",
    output:
        summary=f"{R}/summary/summary.json",
        plots=[f"{R}/summary/particle_features.png", f"{R}/summary/event_features.png"],
    params:
        outdir=parent_dir,
        config=json.dumps(config["data"]["summary"], sort_keys=True),
        track=track("summarize"),
    log:
        f"{R}/logs/summarize.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm summarize --data {input} --out {params.outdir} --config {params.config:q} "
        "{params.track} > {log} 2>&1"
