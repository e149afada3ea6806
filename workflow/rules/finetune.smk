# Stage 4-5: the label-efficiency study (issue 5).
#   label_subsets   nested, class-balanced label subsets of the train split, defined once
#   study_run       the study's MLflow parent run; every fine-tuning run nests under it
#   finetune        one job per cell: backbone x label count x mode x seed (GPU when available)
#   evaluate        test-split metrics of each cell, logged into the cell's MLflow run
#   embed           backbone embeddings (pretrained and random-init) in faiss, and the k-NN accuracy probe
#   report          the HTML report (and Snakemake --report figures), logged to the parent run
from physfm.finetune import grid

FT = config["finetune"]
EV = config["evaluate"]
FT_DIR = f"{R}/finetune"
FT_BACKBONES = FT["backbones"]
LABEL_SPECS = grid.label_specs([*FT["labels"], *FT["reference_labels"]])
MAIN_TOKENS = [grid.label_token(s) for s in FT["labels"]]
FT_CELLS = grid.grid_cells(
    FT_BACKBONES,
    MAIN_TOKENS,
    FT["modes"],
    FT["seeds"],
    FT["scratch_per_backbone"],
    reference_tokens=[t for t in LABEL_SPECS if t not in MAIN_TOKENS],
)
CELL = "{backbone}/{labels}/{mode}/seed{seed}"
CELL_RESULTS = [f"{FT_DIR}/{b}/{t}/{m}/seed{s}/test.json" for b, t, m, s in FT_CELLS]
KNN_RESULTS = [f"{R}/embed/{b}/{i}/knn.json" for b in FT_BACKBONES for i in ("pretrained", "random")]
KNN_RESULTS = KNN_RESULTS if EV["knn"]["enabled"] else []
STUDY_TOKENIZERS = grid.backbone_tokenizers(config.get("pretrain", {}), FT_BACKBONES)
# A pretrained backbone is the directory the pretrain rule writes.
BACKBONE_DIR = f"{R}/pretrain/{{backbone}}"


wildcard_constraints:
    backbone="[A-Za-z0-9_]+",
    labels=r"n\d+|f[0-9.]+|all",
    mode="scratch|finetune|frozen",
    seed=r"\d+",
    init="pretrained|random",


rule label_subsets:
    input:
        f"{R}/data",
    output:
        directory(f"{FT_DIR}/subsets"),
    params:
        labels=",".join(LABEL_SPECS.values()),
        seed=FT["subset_seed"],
    log:
        f"{R}/logs/finetune/subsets.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm subsets --data {input} --labels {params.labels} --seed {params.seed} --out {output} > {log} 2>&1"


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
    output:
        directory(f"{FT_DIR}/{CELL}/model"),
    params:
        spec=lambda wc: LABEL_SPECS[wc.labels],
        run_name=lambda wc: grid.cell_run_name(
            wc.backbone, LABEL_SPECS[wc.labels], wc.mode, wc.seed, len(FT_BACKBONES) > 1
        ),
        pool=FT["head"]["pool"],
        head=FT["head"]["kind"],
        hidden=FT["head"]["hidden"],
        dropout=FT["head"]["dropout"],
        lr=FT["lr"],
        backbone_lr_scale=FT["backbone_lr_scale"],
        layer_decay=FT["layer_decay"],
        weight_decay=FT["weight_decay"],
        batch_size=FT["batch_size"],
        max_steps=FT["max_steps"],
        warmup_steps=FT["warmup_steps"],
        eval_every=FT["eval_every"],
        patience=FT["patience"],
        val_max_events=FT["val_max_events"],
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
        "physfm finetune --data {input.data} --backbone {input.backbone} --backbone-name {wildcards.backbone} "
        "--subsets {input.subsets} --labels '{params.spec}' --mode {wildcards.mode} --seed {wildcards.seed} "
        "--out {output} --pool {params.pool} --head {params.head} --head-hidden {params.hidden} "
        "--head-dropout {params.dropout} --lr {params.lr} --backbone-lr-scale {params.backbone_lr_scale} "
        "--layer-decay {params.layer_decay} --weight-decay {params.weight_decay} --batch-size {params.batch_size} "
        "--max-steps {params.max_steps} --warmup-steps {params.warmup_steps} --eval-every {params.eval_every} "
        "--patience {params.patience} --val-max-events {params.val_max_events} --threads {threads} --no-progress "
        "--parent-run-file {input.parent} --run-name '{params.run_name}' {params.track} > {log} 2>&1"


rule evaluate:
    input:
        model=f"{FT_DIR}/{CELL}/model",
        data=f"{R}/data",
    output:
        f"{FT_DIR}/{CELL}/test.json",
    params:
        split=EV["split"],
        bootstrap=EV["bootstrap"],
        pairs=",".join(EV["pairs"]),
    threads: 1
    log:
        f"{R}/logs/evaluate/{{backbone}}_{{labels}}_{{mode}}_seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm evaluate --model {input.model} --data {input.data} --split {params.split} --out {output} "
        "--bootstrap {params.bootstrap} --pairs {params.pairs} --threads {threads} > {log} 2>&1"


rule embed:
    input:
        backbone=BACKBONE_DIR,
        data=f"{R}/data",
        parent=f"{FT_DIR}/study_run.json",
    output:
        train=directory(f"{R}/embed/{{backbone}}/{{init}}/train"),
        test=directory(f"{R}/embed/{{backbone}}/{{init}}/{EV['split']}"),
        knn=f"{R}/embed/{{backbone}}/{{init}}/knn.json",
    params:
        out=lambda wc, output: str(Path(output.knn).parent),
        splits=f"train,{EV['split']}",
        index=EV["knn"]["index"],
        k=EV["knn"]["k"],
        max_events=EV["knn"]["max_events"],
        random=lambda wc: "--random-init 1" if wc.init == "random" else "",
        name=lambda wc: f"{wc.backbone} {wc.init}",
        track=lambda wc: track("embed", wc),
    threads: 1
    log:
        f"{R}/logs/embed/{{backbone}}_{{init}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm embed --backbone {input.backbone} --data {input.data} --split {params.splits} --out {params.out} "
        "--index {params.index} --knn {params.k} --max-events {params.max_events} {params.random} "
        "--name '{params.name}' --threads {threads} --parent-run-file {input.parent} "
        "--run-name 'embed {params.name}' {params.track} > {log} 2>&1"


rule report:
    input:
        results=CELL_RESULTS,
        knn=KNN_RESULTS,
        summary=f"{R}/summary/summary.json",
        subsets=f"{FT_DIR}/subsets",
        parent=f"{FT_DIR}/study_run.json",
        backbones=expand(BACKBONE_DIR, backbone=FT_BACKBONES),
        tokenizers=[f"{R}/tokenizers/{t}" for t in STUDY_TOKENIZERS],
    output:
        html=report(f"{R}/report/report.html", caption="../report/report.rst", category="Report"),
        efficiency=report(
            f"{R}/report/figures/label_efficiency.png", caption="../report/efficiency.rst", category="Label efficiency"
        ),
        factor=report(
            f"{R}/report/figures/efficiency_factor.png", caption="../report/factor.rst", category="Label efficiency"
        ),
        roc=report(f"{R}/report/figures/roc.png", caption="../report/roc.rst", category="Label efficiency"),
        curves=report(
            f"{R}/report/figures/finetune_curves.png", caption="../report/curves.rst", category="Fine-tuning"
        ),
        pretraining=report(
            f"{R}/report/figures/pretraining.png", caption="../report/pretraining.rst", category="Pretraining"
        ),
        data=f"{R}/report/report.json",
    params:
        summary=lambda wc, input: str(Path(input.summary).parent),
        pretrain=lambda wc, input: " ".join(f"--pretrain {b}={d}" for b, d in zip(FT_BACKBONES, input.backbones)),
        tokenizers=lambda wc, input: " ".join(
            f"--tokenizer {t}={d}" for t, d in zip(STUDY_TOKENIZERS, input.tokenizers)
        ),
        knn=lambda wc, input: ("--knn " + " ".join(input.knn)) if input.knn else "",
        figures=lambda wc, output: str(Path(output.efficiency).parent),
        metric=EV["metric"],
        title=EV["report"]["title"],
        bootstrap=EV["report"]["bootstrap"],
        study=STUDY,
    log:
        f"{R}/logs/report.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm report --results {input.results} {params.knn} --out {output.html} --figures {params.figures} "
        "--metric {params.metric} --title '{params.title}' --summary {params.summary} {params.pretrain} {params.tokenizers} "
        "--subsets {input.subsets} --bootstrap {params.bootstrap} --parent-run-file {input.parent} "
        "--study-info study={params.study} > {log} 2>&1"


ALL_TARGETS += [f"{R}/report/report.html"]
