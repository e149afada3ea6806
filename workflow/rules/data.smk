# Stage 1: raw events -> sharded HDF5 with a data_version, and a data summary.
# Each job gets its config section as one JSON document (--config); see physfm/stage.py.
# A downstream set (config `downstream`) reuses these rules (downstream_generate, downstream_convert) with
# its own data section, into results/<study>/downstream/<name>/{raw,data}.
SIM_NAME = simulator(config["data"])[0]


rule generate:
    output:
        directory(f"{R}/raw"),
    params:
        what=SIM_NAME,
        # the keys of this generator only: an IceCube setting does not regenerate jets
        config=generator_settings(config["data"]),
        track=track("generate"),
    threads: 2
    log:
        f"{R}/logs/generate.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm generate {params.what} --out {output} --config {params.config:q} --workers {threads} "
        "{params.track} > {log} 2>&1"


CONVERT_GROUPS = config["data"]["convert"]["groups"]
# label branches exist in JetClass files only; `groups` is the rules' business, not the converter's
CONVERT_SETTINGS = convert_settings(config["data"])


# Scatter: one job per group of input files (one sbatch job each on the SLURM profile) reads and prepares its
# files into a part; gather: one job writes the shards, manifest and data_version, byte-identical to the single
# job (physfm/data/convert_parts.py). Defined whatever data.convert.groups: a downstream set's conversion is a
# convert_part job without a group (all its files, written as a dataset).
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
        group=lambda wildcards: f"--group {wildcards.group}",
        track=lambda wildcards: track("convert_part", wildcards),
    threads: 2
    log:
        f"{R}/logs/convert_part/{{group}}.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm convert --format {params.format} --input '{params.input}' --out {output} "
        "--config {params.config:q} {params.group} --workers {threads} {params.track} "
        "> {log} 2>&1"


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


use rule generate as downstream_generate with:
    output:
        directory(f"{DSR}/{{ds}}/raw"),
    wildcard_constraints:
        ds="[A-Za-z0-9_]+",
    params:
        what=lambda wc: simulator(DOWNSTREAM[wc.ds]["data"])[0],
        config=lambda wc: generator_settings(DOWNSTREAM[wc.ds]["data"]),
        track=lambda wc: track("downstream_generate", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/generate.log",


use rule convert_part as downstream_convert with:
    input:
        lambda wc: raw_input(DOWNSTREAM[wc.ds]["data"], f"{DSR}/{wc.ds}/raw"),
    output:
        directory(f"{DSR}/{{ds}}/data"),
    wildcard_constraints:
        ds="[A-Za-z0-9_]+",
    params:
        input=lambda wc, input: raw_path(DOWNSTREAM[wc.ds]["data"], input),
        format=lambda wc: DOWNSTREAM[wc.ds]["data"]["format"],
        config=lambda wc: convert_settings(DOWNSTREAM[wc.ds]["data"]),
        group="",
        track=lambda wc: track("downstream_convert", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/convert.log",


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
