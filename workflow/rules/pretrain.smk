# Stage 3: self-supervised pretraining, one job per entry of config pretrain.backbones
# (MPM, next-token, regression; PolarBERT from issue 6), and jets sampled from the
# next-token backbones that ask for it (sample: true): results/<study>/samples/<backbone>/.
import json

from physfm.pretrain.config import backbone_slice

PRETRAIN = config["pretrain"]
BACKBONES = PRETRAIN["backbones"]
PRETRAIN_RESOURCES = PRETRAIN["resources"]
SAMPLE = PRETRAIN["sample"]

rule pretrain:
    input:
        data=f"{R}/data",
        tokenizer=lambda wc: (
            [f"{R}/tokenizers/{BACKBONES[wc.backbone]['tokenizer']}"] if BACKBONES[wc.backbone].get("tokenizer") else []
        ),
    output:
        # backbone.safetensors, backbone.json, objective.safetensors, metrics.json, history.json, loss.png,
        # manifest.json, tokenizer/ (see physfm/pretrain/checkpoints.py)
        directory(f"{R}/pretrain/{{backbone}}"),
    wildcard_constraints:
        backbone="|".join(BACKBONES) or "NONE",
    params:
        # this backbone's settings only (its own objective's options), so that editing another
        # backbone, or another objective's options, does not rerun this one
        config=lambda wc: json.dumps(backbone_slice(PRETRAIN, wc.backbone), sort_keys=True),
        tokenizer=lambda wc, input: f"--tokenizer {input.tokenizer[0]}" if input.tokenizer else "",
        # outside the output directory, which Snakemake clears before a rerun: a preempted or failed
        # job that is run again resumes from its last checkpoint (if the settings are unchanged)
        checkpoints=lambda wc: f"{R}/pretrain/.checkpoints/{wc.backbone}",
        track=lambda wc: track("pretrain", wc),
    threads: PRETRAIN_RESOURCES["threads"]
    resources:
        gpu=PRETRAIN_RESOURCES["gpu"],
        mem_mb=PRETRAIN_RESOURCES["mem_mb"],
        runtime=PRETRAIN_RESOURCES["runtime"],
    log:
        f"{R}/logs/pretrain/{{backbone}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm pretrain --config {params.config:q} --backbone {wildcards.backbone} --data {input.data} "
        "{params.tokenizer} --out {output} --checkpoint-dir {params.checkpoints} --threads {threads} --no-progress "
        "--run-name 'pretrain {wildcards.backbone}' {params.track} > {log} 2>&1"


rule sample:
    input:
        model=f"{R}/pretrain/{{backbone}}",
        data=f"{R}/data",
    output:
        comparison=f"{R}/samples/{{backbone}}/comparison.json",
        plot=f"{R}/samples/{{backbone}}/generation.png",
    wildcard_constraints:
        backbone="|".join(b for b, e in BACKBONES.items() if e["objective"] == "next_token") or "NONE",
    params:
        out=lambda wc, output: str(Path(output.comparison).parent),
        config=json.dumps(SAMPLE, sort_keys=True),
        track=lambda wc: track("sample", wc),
    threads: PRETRAIN_RESOURCES["threads"]
    log:
        f"{R}/logs/sample/{{backbone}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm sample --model {input.model} --out {params.out} --data {input.data} --config {params.config:q} "
        "--threads {threads} --no-progress {params.track} > {log} 2>&1"


ALL_TARGETS += [f"{R}/pretrain/{b}" for b in BACKBONES]
ALL_TARGETS += [
    f"{R}/samples/{b}/comparison.json"
    for b, entry in BACKBONES.items()
    if entry.get("sample") and entry["objective"] == "next_token"
]
