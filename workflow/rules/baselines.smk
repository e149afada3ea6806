# Stage 4b: the supervised and zero-label baselines of the label-efficiency study (issue 18), on the
# same per-seed label subsets and budget protocol as the fine-tuning grid (finetune.baselines):
#   observables   jet observables of every event, once per dataset (the BDT's and the cut's inputs)
#   baseline      bdt / pfn at every label count and seed; cut once (no labels)
#   linefit       IceCube: LineFit once (no labels); linefit_refined at every label count and seed
#   segfloor      LArTPC: the zero-label segmentation floor (geometric rules), once
# Results land in results/<study>/baselines/<method>/<labels>/seed<S>/test.json and go to the report.
BASELINES = FT["baselines"]
ZERO_LABEL = ("cut", "linefit", "floor")
BASE_DIR = f"{R}/baselines"
BASELINE_RESULTS = [f"{BASE_DIR}/{m}/n0/seed1/test.json" for m in BASELINES if m in ZERO_LABEL] + [
    f"{BASE_DIR}/{m}/{t}/seed{s}/test.json"
    for m in BASELINES
    if m not in ZERO_LABEL
    for t in LABEL_SPECS
    for s in grid.seeds_for(t, FT["seeds"], FT["seeds_at"])
]
EVAL_CONFIG = json.dumps({k: EV[k] for k in EvaluateConfig.__dataclass_fields__}, sort_keys=True)


rule observables:
    input:
        f"{R}/data",
    output:
        directory(f"{R}/observables"),
    params:
        track=track("observables"),
    # one thread: it then runs beside pretraining (one core), and the BDT and cut baselines after it fill that
    # core; with two it waited for two free cores, which the fine-tuning grid never left (issue 18's timing)
    threads: 1
    log:
        f"{R}/logs/baselines/observables.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm observables --data {input} --out {output} --workers {threads} --no-progress {params.track} "
        "> {log} 2>&1"


rule baseline:
    input:
        data=f"{R}/data",
        subsets=f"{FT_DIR}/subsets",
        observables=f"{R}/observables",
        parent=f"{FT_DIR}/study_run.json",
    output:
        f"{BASE_DIR}/{{method}}/{{labels}}/seed{{seed}}/test.json",
    wildcard_constraints:
        method="bdt|pfn|cut",
    params:
        out=lambda wc, output: str(Path(output[0]).parent),
        config=lambda wc: json.dumps(config["baselines"][wc.method], sort_keys=True),
        eval_config=EVAL_CONFIG,
        labelled=lambda wc, input: (
            "" if wc.method == "cut" else f"--subsets {input.subsets} --labels '{LABEL_SPECS[wc.labels]}'"
        ),
        track=lambda wc: track("baseline", wc),
    threads: 1
    resources:
        mem_mb=FT["resources"]["mem_mb"],
        runtime=FT["resources"]["runtime"],
    log:
        f"{R}/logs/baselines/{{method}}_{{labels}}_seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm baseline --method {wildcards.method} --data {input.data} {params.labelled} --seed {wildcards.seed} "
        "--config {params.config:q} --eval-config {params.eval_config:q} --observables {input.observables} "
        "--out {params.out} --threads {threads} --no-progress --parent-run-file {input.parent} {params.track} "
        "> {log} 2>&1"


rule linefit:
    input:
        data=f"{R}/data",
        subsets=f"{FT_DIR}/subsets",
        parent=f"{FT_DIR}/study_run.json",
    output:
        f"{BASE_DIR}/{{method}}/{{labels}}/seed{{seed}}/test.json",
    wildcard_constraints:
        method="linefit|linefit_refined",
    params:
        labelled=lambda wc, input: (
            "" if wc.method == "linefit" else f"--subsets {input.subsets} --labels '{LABEL_SPECS[wc.labels]}'"
        ),
        eval_config=EVAL_CONFIG,
        parent=lambda wc, input: f"--parent-run-file {input.parent}",
        track=lambda wc: track("linefit", wc),
    threads: 1
    log:
        f"{R}/logs/baselines/{{method}}_{{labels}}_seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm linefit --data {input.data} --mode {wildcards.method} {params.labelled} --seed {wildcards.seed} "
        "--eval-config {params.eval_config:q} --threads {threads} --out {output} {params.parent} "
        "{params.track} > {log} 2>&1"


rule segfloor:
    input:
        data=f"{R}/data",
        parent=f"{FT_DIR}/study_run.json",
    output:
        f"{BASE_DIR}/{{method}}/{{labels}}/seed{{seed}}/test.json",
    wildcard_constraints:
        method="floor",
        labels="n0",
        seed="1",
    params:
        eval_config=EVAL_CONFIG,
        track=lambda wc: track("segfloor", wc),
    threads: 1
    log:
        f"{R}/logs/baselines/{{method}}_{{labels}}_seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm segfloor --data {input.data} --eval-config {params.eval_config:q} --out {output} "
        "--parent-run-file {input.parent} {params.track} > {log} 2>&1"
