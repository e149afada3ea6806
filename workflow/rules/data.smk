# Stage 1: raw events -> sharded HDF5 with a data_version, and a data summary.


rule generate:
    output:
        directory(f"{R}/raw"),
    params:
        n_jets=config["data"]["generate"]["n_jets"],
        seed=config["data"]["generate"]["seed"],
        processes=",".join(config["data"]["generate"]["processes"]),
        files=config["data"]["generate"]["files"],
        track=track("generate"),
    threads: 2
    log:
        f"{R}/logs/generate.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm generate jets --out {output} --n-jets {params.n_jets} --seed {params.seed} "
        "--processes {params.processes} --files {params.files} --workers {threads} "
        "{params.track} > {log} 2>&1"


rule convert:
    input:
        raw_input(),
    output:
        directory(f"{R}/data"),
    params:
        input=raw_argument,
        format=config["data"]["format"],
        shard_events=config["data"]["convert"]["shard_events"],
        split=",".join(f"{k}={config['data']['convert']['split'].get(k, 0.0)}" for k in ("train", "val", "test")),
        labels=",".join(config["data"]["convert"]["labels"]),
        on_error=config["data"]["convert"]["on_error"],
        track=track("convert"),
    log:
        f"{R}/logs/convert.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm convert --format {params.format} --input '{params.input}' --out {output} "
        "--shard-events {params.shard_events} --split {params.split} --labels {params.labels} "
        "--on-error {params.on_error} {params.track} > {log} 2>&1"


rule summarize:
    input:
        f"{R}/data",
    output:
        summary=f"{R}/summary/summary.json",
        plots=[f"{R}/summary/particle_features.png", f"{R}/summary/event_features.png"],
    params:
        outdir=parent_dir,
        max_events=config["data"]["summary"]["max_events"],
        track=track("summarize"),
    log:
        f"{R}/logs/summarize.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm summarize --data {input} --out {params.outdir} --max-events {params.max_events} "
        "{params.track} > {log} 2>&1"
