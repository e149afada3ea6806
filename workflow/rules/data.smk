# Stage 1: raw events -> sharded HDF5 with a data_version, and a data summary.


GEN = config["data"]["generate"]
if config["data"]["source"] == "generate" and config["data"]["format"] == "prometheus":
    raise ValueError("data.source 'generate' simulates IceCube events in the Kaggle layout: set data.format: kaggle")
ICECUBE_SIM = config["data"]["format"] != "jetclass"  # IceCube formats: simulate in the Kaggle layout


rule generate:
    output:
        directory(f"{R}/raw"),
    params:
        what="icecube" if ICECUBE_SIM else "jets",
        seed=GEN["seed"],
        args=(
            f"--n-events {GEN['n_events']} --events-per-batch {GEN['events_per_batch']} "
            f"--track-fraction {GEN['track_fraction']}"
            if ICECUBE_SIM
            else f"--n-jets {GEN['n_jets']} --processes {','.join(GEN['processes'])} --files {GEN['files']}"
        ),
        track=track("generate"),
    threads: 2
    log:
        f"{R}/logs/generate.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm generate {params.what} --out {output} --seed {params.seed} {params.args} --workers {threads} "
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
        # label branches exist in JetClass files only
        labels=(
            "--labels " + ",".join(config["data"]["convert"]["labels"])
            if config["data"]["format"] == "jetclass"
            else ""
        ),
        on_error=config["data"]["convert"]["on_error"],
        track=track("convert"),
    threads: 2
    log:
        f"{R}/logs/convert.log",
    conda:
        "../../envs/io.yaml"
    shell:
        "physfm convert --format {params.format} --input '{params.input}' --out {output} "
        "--shard-events {params.shard_events} --split {params.split} {params.labels} "
        "--on-error {params.on_error} --workers {threads} {params.track} > {log} 2>&1"


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
