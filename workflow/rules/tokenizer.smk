# Stage 2: particle tokenizers (issue 3): k-means with faiss, VQ-VAE, binning.
#   fit_tokenizer   one job per entry of tokenizer.tokenizers ("<method>-<K>"), writing
#                   results/<study>/tokenizers/<method>-<K>/ (codebook, normalisation, manifest,
#                   metrics.json and plots/ on the validation split) and one MLflow run.
# Tokens are not stored: pretraining encodes each batch on the fly with the fitted tokenizer,
# so there is no separate tokenize step and no token shards to go stale.
# Each job gets only its own method's options (tokenizer.<method>), so editing the vqvae section
# reruns the VQ-VAE fits and nothing else.
import json

TOK = config["tokenizer"]


rule fit_tokenizer:
    input:
        f"{R}/data",
    output:
        directory(f"{R}/tokenizers/{{method}}-{{k}}"),
    wildcard_constraints:
        method="kmeans|vqvae|binning",
        k=r"\d+",
    params:
        # this method's options only, so that editing the vqvae section reruns the VQ-VAE fits alone
        config=lambda wc: json.dumps(
            {"features": TOK["features"], "seed": TOK["seed"], "eval": TOK["eval"], "options": TOK[wc.method]},
            sort_keys=True,
        ),
        run_name=lambda wc: f"tokenizer {wc.method}-{wc.k}",
        track=lambda wc: track("fit_tokenizer", wc),
    threads: TOK["resources"]["threads"]
    resources:
        gpu=lambda wc: TOK["resources"]["gpu"] if wc.method == "vqvae" else 0,
        mem_mb=TOK["resources"]["mem_mb"],
        runtime=TOK["resources"]["runtime"],
    log:
        f"{R}/logs/tokenizer/{{method}}-{{k}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "OMP_NUM_THREADS={threads} physfm tokenizer fit --method {wildcards.method} --codebook-size {wildcards.k} "
        "--data {input} --out {output} --config {params.config:q} --no-progress "
        "--run-name '{params.run_name}' {params.track} > {log} 2>&1"


ALL_TARGETS += [f"{R}/tokenizers/{name}" for name in TOK["tokenizers"]]
