# Stage 3: self-supervised pretraining, one job per entry of config pretrain.backbones
# (MPM, next-token, regression; PolarBERT from issue 6), and jet generation from the
# next-token backbones that ask for it (generate: true): results/<study>/generate/<backbone>/.
import json

PRETRAIN = config["pretrain"]
BACKBONES = PRETRAIN["backbones"]
PRETRAIN_RESOURCES = PRETRAIN["resources"]
GENERATE = PRETRAIN["generate"]

rule pretrain:
    input:
        data=f"{R}/data",
        tokenizer=lambda wc: (
            [f"{R}/tokenizers/{BACKBONES[wc.backbone]['tokenizer']}"] if BACKBONES[wc.backbone].get("tokenizer") else []
        ),
    output:
        # backbone.safetensors, backbone.json, objective.safetensors, metrics.json, history.json, loss.png,
        # manifest.json, tokenizer/ (see physfm/train/checkpoints.py)
        directory(f"{R}/pretrain/{{backbone}}"),
    wildcard_constraints:
        backbone="|".join(BACKBONES) or "NONE",
    params:
        # this backbone's settings only, so that editing another backbone does not rerun this one
        config=lambda wc: json.dumps(
            {
                **{k: v for k, v in PRETRAIN.items() if k not in ("backbones", "resources", "generate")},
                "backbones": {wc.backbone: BACKBONES[wc.backbone]},
            },
            sort_keys=True,
        ),
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


rule generate_from_model:
    input:
        model=f"{R}/pretrain/{{backbone}}",
        data=f"{R}/data",
    output:
        comparison=f"{R}/generate/{{backbone}}/comparison.json",
        plot=f"{R}/generate/{{backbone}}/generation.png",
    wildcard_constraints:
        backbone="|".join(b for b, e in BACKBONES.items() if e["objective"] == "next_token") or "NONE",
    params:
        out=lambda wc, output: str(Path(output.comparison).parent),
        n=GENERATE["n"],
        temperature=GENERATE["temperature"],
        top_k=GENERATE["top_k"],
        seed=GENERATE["seed"],
        split=GENERATE["split"],
        track=lambda wc: track("generate_from_model", wc),
    threads: PRETRAIN_RESOURCES["threads"]
    log:
        f"{R}/logs/generate_from_model/{{backbone}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm generate-from-model --model {input.model} --n {params.n} --out {params.out} "
        "--data {input.data} --split {params.split} --temperature {params.temperature} --top-k {params.top_k} "
        "--seed {params.seed} --threads {threads} --no-progress {params.track} > {log} 2>&1"


ALL_TARGETS += [f"{R}/pretrain/{b}" for b in BACKBONES]
ALL_TARGETS += [
    f"{R}/generate/{b}/comparison.json"
    for b, entry in BACKBONES.items()
    if entry.get("generate") and entry["objective"] == "next_token"
]
