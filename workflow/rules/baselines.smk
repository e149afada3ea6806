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
BASELINE_RESULTS = [
    f"{BASE_DIR}/{m}/{t}/seed{s}/test.json"
    for m, t, s in grid.baseline_cells(BASELINES, list(LABEL_SPECS), FT["seeds"], FT["seeds_at"], ZERO_LABEL)
]
BASELINE_RESULTS = BASELINE_RESULTS if FT["on_corpus"] else []
EVAL_CONFIG = json.dumps(EVAL_SETTINGS, sort_keys=True)
# downstream sets: their baselines, and the jet baselines (bdt, pfn, cut) scored on the sets of evaluate_on too
SCORED_ELSEWHERE = ("bdt", "pfn", "cut")
DS_BASE = f"{DSR}/{{ds}}/baselines"
DS_BASELINE_RESULTS = {
    name: [
        f"{DSR}/{name}/baselines/{m}/{t}/seed{s}/{on}test.json"
        for m, t, s in grid.baseline_cells(spec["baselines"], list(spec["label_specs"]), spec["seeds"], spec["seeds_at"], ZERO_LABEL)
        for on in ["", *(f"on_{o}/" for o in spec["evaluate_on"] if m in SCORED_ELSEWHERE)]
    ]
    for name, spec in DOWNSTREAM.items()
}


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
        test="",
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
        "{params.test} --out {params.out} --threads {threads} --no-progress --parent-run-file {input.parent} {params.track} "
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


# ---- downstream sets: the rules above on each set's data and subsets
use rule observables as downstream_observables with:
    input:
        f"{DSR}/{{ds}}/data",
    output:
        directory(f"{DSR}/{{ds}}/observables"),
    params:
        track=lambda wc: track("downstream_observables", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/observables.log",


use rule baseline as downstream_baseline with:
    input:
        data=f"{DSR}/{{ds}}/data",
        subsets=f"{DS_FT}/subsets",
        observables=f"{DSR}/{{ds}}/observables",
        parent=f"{FT_DIR}/study_run.json",
    output:
        f"{DS_BASE}/{{method}}/{{labels}}/seed{{seed}}/test.json",
    params:
        eval_config=lambda wc: json.dumps({**EVAL_SETTINGS, "pairs": DOWNSTREAM[wc.ds]["pairs"]}, sort_keys=True),
        labelled=lambda wc, input: (
            "" if wc.method == "cut" else f"--subsets {input.subsets} --labels '{DOWNSTREAM[wc.ds]['label_specs'][wc.labels]}'"
        ),
        track=lambda wc: track("downstream_baseline", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/baselines/{{method}}_{{labels}}_seed{{seed}}.log",


# the same training, scored on another set's test split (and its observables)
use rule downstream_baseline as downstream_baseline_on with:
    input:
        data=f"{DSR}/{{ds}}/data",
        subsets=f"{DS_FT}/subsets",
        observables=f"{DSR}/{{ds}}/observables",
        parent=f"{FT_DIR}/study_run.json",
        test_data=lambda wc: dataset_dir(wc.other),
        test_observables=lambda wc: observables_dir(wc.other),
    output:
        f"{DS_BASE}/{{method}}/{{labels}}/seed{{seed}}/on_{{other}}/test.json",
    params:
        test=lambda wc, input: (
            f"--test-data {input.test_data} --test-observables {input.test_observables} --tested-on {wc.other}"
        ),
    log:
        f"{R}/logs/downstream/{{ds}}/baselines/{{method}}_{{labels}}_seed{{seed}}_on_{{other}}.log",


use rule linefit as downstream_linefit with:
    input:
        data=f"{DSR}/{{ds}}/data",
        subsets=f"{DS_FT}/subsets",
        parent=f"{FT_DIR}/study_run.json",
    output:
        f"{DS_BASE}/{{method}}/{{labels}}/seed{{seed}}/test.json",
    params:
        labelled=lambda wc, input: (
            "" if wc.method == "linefit" else f"--subsets {input.subsets} --labels '{DOWNSTREAM[wc.ds]['label_specs'][wc.labels]}'"
        ),
        track=lambda wc: track("downstream_linefit", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/baselines/{{method}}_{{labels}}_seed{{seed}}.log",


use rule segfloor as downstream_segfloor with:
    input:
        data=f"{DSR}/{{ds}}/data",
        parent=f"{FT_DIR}/study_run.json",
    output:
        f"{DS_BASE}/{{method}}/{{labels}}/seed{{seed}}/test.json",
    params:
        track=lambda wc: track("downstream_segfloor", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/baselines/{{method}}_{{labels}}_seed{{seed}}.log",
