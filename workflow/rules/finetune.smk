# Stage 4-5: the label-efficiency study (issue 5).
#   label_subsets   nested, class-balanced label subsets of the train split, defined once
#   study_run       the study's MLflow parent run; every fine-tuning run nests under it
#   finetune        one job per cell: backbone x label count x mode x seed (GPU when available)
#   evaluate        test-split metrics of each cell, logged into the cell's MLflow run
#   embed           backbone embeddings (pretrained and random-init) in faiss, and the k-NN accuracy probe
#   report          the HTML report (and Snakemake --report figures), logged to the parent run
import json
import shlex

from physfm.evaluate.evaluate import EvaluateConfig
from physfm.finetune import grid

FT = config["finetune"]
EV = config["evaluate"]
FT_DIR = f"{R}/finetune"
FT_BACKBONES = FT["backbones"]
LABEL_SPECS = grid.label_specs([*FT["labels"], *FT["reference_labels"]])
MAIN_TOKENS = [grid.label_token(s) for s in FT["labels"]]
ABLATION = FT["ablation"]
ABLATION_TOKENS = [grid.label_token(s) for s in (ABLATION["labels"] or FT["labels"])]
if missing := [t for t in ABLATION_TOKENS if t not in LABEL_SPECS]:
    raise ValueError(f"finetune.ablation.labels {missing}: use label counts of finetune.labels or reference_labels")
SCALING = FT["scaling"]
SCALING_TOKENS = [grid.label_token(s) for s in (SCALING["labels"] or FT["labels"])]
if missing := [t for t in SCALING_TOKENS if t not in LABEL_SPECS]:
    raise ValueError(f"finetune.scaling.labels {missing}: use label counts of finetune.labels or reference_labels")
# every backbone a cell fine-tunes or the report reads: the main ones, the ablations', the corpus-scaling curve's
STUDY_BACKBONES = list(dict.fromkeys([*FT_BACKBONES, *ABLATION["backbones"], *SCALING["backbones"]]))
if unknown := [b for b in STUDY_BACKBONES if b not in config["pretrain"]["backbones"]]:
    raise ValueError(f"finetune backbones {unknown} are not in pretrain.backbones {sorted(config['pretrain']['backbones'])}")
FT_CELLS = grid.grid_cells(
    FT_BACKBONES,
    MAIN_TOKENS,
    FT["modes"],
    FT["seeds"],
    FT["scratch_per_backbone"],
    reference_tokens=[t for t in LABEL_SPECS if t not in MAIN_TOKENS],
)
FT_CELLS += [c for c in grid.ablation_cells(ABLATION, FT_BACKBONES, ABLATION_TOKENS, FT["seeds"]) if c not in FT_CELLS]
FT_CELLS += [c for c in grid.scaling_cells(SCALING, SCALING_TOKENS, FT["seeds"]) if c not in FT_CELLS]
FT_CELLS = grid.thin_seeds(FT_CELLS, FT["seeds"], FT["seeds_at"])
# the in-budget hyperparameter grid every fine-tuning mode gets (physfm/finetune/search.py), at the label
# counts of finetune.search_labels (all when null); elsewhere its first candidate, for every mode
SEARCH_TOKENS = set(LABEL_SPECS) if FT["search_labels"] is None else {grid.label_token(s) for s in FT["search_labels"]}
if unknown_search := sorted(SEARCH_TOKENS - set(LABEL_SPECS)):
    raise ValueError(f"finetune.search_labels {unknown_search}: use label counts of finetune.labels or reference_labels")
CELL = "{backbone}/{labels}/{mode}/seed{seed}"
# finetune.on_corpus false: the corpus is pretraining data only (the downstream sets hold the labels)
CELL_RESULTS = [f"{FT_DIR}/{b}/{t}/{m}/seed{s}/test.json" for b, t, m, s in FT_CELLS] if FT["on_corpus"] else []
KNN_RESULTS = [f"{R}/embed/{b}/{i}/knn.json" for b in FT_BACKBONES for i in ("pretrained", "random")]
KNN_RESULTS = KNN_RESULTS if EV["knn"]["enabled"] and FT["on_corpus"] else []
if not FT["on_corpus"] and not DOWNSTREAM and not config["anomaly"]["enabled"]:
    raise ValueError("finetune.on_corpus is false and there is no downstream set: nothing would be fine-tuned")
# the evaluate settings of every evaluation job (a downstream set: its own signal:background pairs)
EVAL_SETTINGS = {k: EV[k] for k in EvaluateConfig.__dataclass_fields__}
# Downstream sets: per set, its grid cells (and each cell scored on the sets of its evaluate_on)
DS_FT = f"{DSR}/{{ds}}/finetune"
DS_CELL_RESULTS = {
    name: [
        f"{DSR}/{name}/finetune/{b}/{t}/{m}/seed{s}/{on}test.json"
        for b, t, m, s in spec["cells"]
        for on in ["", *(f"on_{o}/" for o in spec["evaluate_on"])]
    ]
    for name, spec in DOWNSTREAM.items()
}
STUDY_TOKENIZERS = grid.backbone_tokenizers(config.get("pretrain", {}), FT_BACKBONES)
# A pretrained backbone is the directory the pretrain rule writes.
BACKBONE_DIR = f"{R}/pretrain/{{backbone}}"
# LArTPC points: every cell is per-point semantic segmentation (physfm/finetune/patch_segmentation.py)
LARTPC = config["data"]["format"] == "pilarnet"


wildcard_constraints:
    backbone="[A-Za-z0-9_]+",
    labels=r"n\d+|f[0-9.]+|all",
    mode="scratch|finetune|frozen|scratch_global|linear",
    seed=r"\d+",
    init="pretrained|random",
    ds="[A-Za-z0-9_]+",
    other="[A-Za-z0-9_]+",


rule label_subsets:
    input:
        f"{R}/data",
    output:
        directory(f"{FT_DIR}/subsets"),
    params:
        # every seed draws its own subsets (nested across label counts within a seed)
        config=json.dumps(
            {"labels": list(LABEL_SPECS.values()), "seeds": FT["seeds"], "budget": FT["budget"]}, sort_keys=True
        ),
    log:
        f"{R}/logs/finetune/subsets.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm subsets --data {input} --config {params.config:q} --out {output} > {log} 2>&1"


rule study_run:
    output:
        f"{FT_DIR}/study_run.json",
    params:
        name=f"study {STUDY}",
        track=track("study_run"),
    log:
        f"{R}/logs/finetune/study_run.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm study-run --out {output} --run-name '{params.name}' {params.track} > {log} 2>&1"


rule finetune:
    input:
        data=f"{R}/data",
        subsets=f"{FT_DIR}/subsets",
        backbone=BACKBONE_DIR,
        parent=f"{FT_DIR}/study_run.json",
        observables=head_observables(f"{R}/observables"),
    output:
        directory(f"{FT_DIR}/{CELL}/model"),
    params:
        spec=lambda wc: LABEL_SPECS[wc.labels],
        run_name=lambda wc: grid.cell_run_name(
            wc.backbone, LABEL_SPECS[wc.labels], wc.mode, wc.seed, len(FT_BACKBONES) > 1 or wc.backbone not in FT_BACKBONES
        ),
        # one run's training settings: the finetune section less its grid keys (scratch_global: + its aux loss;
        # LArTPC: + the segmentation task's section)
        config=lambda wc: json.dumps(
            {
                **grid.cell_settings(FT, wc.mode, config["pretrain"]),
                **({"segmentation": config["segmentation"]} if LARTPC else {}),
            },
            sort_keys=True,
        ),
        search=lambda wc: grid.search_args(FT["search"], wc.labels in SEARCH_TOKENS),
        backbone=lambda wc, input: input.backbone,
        task=FT["task"],
        sources=observables_arg,
        track=lambda wc: track("finetune", wc),
    threads: FT["resources"]["threads"]
    resources:
        gpu=FT["resources"]["gpu"],
        mem_mb=FT["resources"]["mem_mb"],
        runtime=FT["resources"]["runtime"],
    log:
        f"{R}/logs/finetune/{{backbone}}_{{labels}}_{{mode}}_seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm finetune --data {input.data} --backbone {params.backbone} --backbone-name {wildcards.backbone} "
        "--task {params.task} "
        "--subsets {input.subsets} --labels '{params.spec}' --mode {wildcards.mode} --seed {wildcards.seed} "
        "--out {output} --config {params.config:q} {params.search} {params.sources} --threads {threads} --no-progress "
        "--parent-run-file {input.parent} --run-name '{params.run_name}' {params.track} > {log} 2>&1"


rule evaluate:
    input:
        model=f"{FT_DIR}/{CELL}/model",
        data=f"{R}/data",
        observables=head_observables(f"{R}/observables"),
    output:
        f"{FT_DIR}/{CELL}/test.json",
    params:
        config=json.dumps(EVAL_SETTINGS, sort_keys=True),
        tested_on="",
        sources=observables_arg,
    threads: 1
    log:
        f"{R}/logs/evaluate/{{backbone}}_{{labels}}_{{mode}}_seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm evaluate --model {input.model} --data {input.data} --out {output} --config {params.config:q} "
        "{params.tested_on} {params.sources} --threads {threads} > {log} 2>&1"


rule embed:
    input:
        backbone=BACKBONE_DIR,
        data=f"{R}/data",
        parent=f"{FT_DIR}/study_run.json",
        subsets=f"{FT_DIR}/subsets",
    output:
        train=directory(f"{R}/embed/{{backbone}}/{{init}}/train"),
        test=directory(f"{R}/embed/{{backbone}}/{{init}}/{EV['split']}"),
        knn=f"{R}/embed/{{backbone}}/{{init}}/knn.json",
    params:
        out=lambda wc, output: str(Path(output.knn).parent),
        splits=f"train,{EV['split']}",
        config=json.dumps({k: v for k, v in EV["knn"].items() if k != "enabled"}, sort_keys=True),
        random=lambda wc: "--random-init 1" if wc.init == "random" else "",
        # the k-NN probe at each small label budget of the study, on the same subsets fine-tuning reads
        labels=",".join(str(s) for s in FT["labels"] if str(s) != "all"),
        seeds=",".join(str(s) for s in FT["seeds"]),
        name=lambda wc: f"{wc.backbone} {wc.init}",
        track=lambda wc: track("embed", wc),
    threads: 1
    log:
        f"{R}/logs/embed/{{backbone}}_{{init}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm embed --backbone {input.backbone} --data {input.data} --split {params.splits} --out {params.out} "
        "--config {params.config:q} {params.random} "
        "--subsets {input.subsets} --labels '{params.labels}' --seeds '{params.seeds}' "
        "--name '{params.name}' --threads {threads} --parent-run-file {input.parent} "
        "--run-name 'embed {params.name}' {params.track} > {log} 2>&1"


# ---- downstream sets (config `downstream`): the rules above, with each set's data, subsets and grid
use rule label_subsets as downstream_label_subsets with:
    input:
        f"{DSR}/{{ds}}/data",
    output:
        directory(f"{DS_FT}/subsets"),
    params:
        config=lambda wc: json.dumps(
            {
                "labels": list(DOWNSTREAM[wc.ds]["label_specs"].values()),
                "seeds": DOWNSTREAM[wc.ds]["seeds"],
                "budget": DOWNSTREAM[wc.ds]["budget"],
            },
            sort_keys=True,
        ),
    log:
        f"{R}/logs/downstream/{{ds}}/subsets.log",


use rule finetune as downstream_finetune with:
    input:
        data=f"{DSR}/{{ds}}/data",
        subsets=f"{DS_FT}/subsets",
        # this study's backbone or another study's directory (a models:/ URI is no file: fetched by the job)
        backbone=lambda wc: downstream_backbone(wc.ds, wc.backbone),
        parent=f"{FT_DIR}/study_run.json",
        observables=head_observables(f"{DSR}/{{ds}}/observables"),
    output:
        directory(f"{DS_FT}/{CELL}/model"),
    params:
        backbone=lambda wc, input: input.backbone or DOWNSTREAM[wc.ds]["backbones"][wc.backbone],
        spec=lambda wc: DOWNSTREAM[wc.ds]["label_specs"][wc.labels],
        run_name=lambda wc: grid.cell_run_name(
            wc.backbone,
            DOWNSTREAM[wc.ds]["label_specs"][wc.labels],
            wc.mode,
            wc.seed,
            len(DOWNSTREAM[wc.ds]["backbones"]) > 1,
            wc.ds,
        ),
        config=lambda wc: json.dumps(
            {
                **grid.cell_settings(FT, wc.mode, config["pretrain"]),
                **({"segmentation": config["segmentation"]} if DOWNSTREAM[wc.ds]["data"]["format"] == "pilarnet" else {}),
            },
            sort_keys=True,
        ),
        search=lambda wc: grid.search_args(FT["search"], wc.labels in DOWNSTREAM[wc.ds]["search_tokens"]),
        task=lambda wc: DOWNSTREAM[wc.ds]["task"],
        track=lambda wc: track("downstream_finetune", wc),
    log:
        f"{R}/logs/downstream/{{ds}}/finetune/{{backbone}}_{{labels}}_{{mode}}_seed{{seed}}.log",


use rule evaluate as downstream_evaluate with:
    input:
        model=f"{DS_FT}/{CELL}/model",
        data=f"{DSR}/{{ds}}/data",
        observables=head_observables(f"{DSR}/{{ds}}/observables"),
    output:
        f"{DS_FT}/{CELL}/test.json",
    params:
        config=lambda wc: json.dumps({**EVAL_SETTINGS, "pairs": DOWNSTREAM[wc.ds]["pairs"]}, sort_keys=True),
    log:
        f"{R}/logs/downstream/{{ds}}/evaluate/{{backbone}}_{{labels}}_{{mode}}_seed{{seed}}.log",


# a downstream set's models scored on another set's test split ("trained on simulation, tested on data")
use rule downstream_evaluate as downstream_evaluate_on with:
    input:
        model=f"{DS_FT}/{CELL}/model",
        data=lambda wc: dataset_dir(wc.other),
        observables=lambda wc: head_observables(observables_dir(wc.other)),
    output:
        f"{DS_FT}/{CELL}/on_{{other}}/test.json",
    params:
        tested_on=lambda wc: f"--tested-on {wc.other}",
    log:
        f"{R}/logs/downstream/{{ds}}/evaluate/{{backbone}}_{{labels}}_{{mode}}_seed{{seed}}_on_{{other}}.log",
