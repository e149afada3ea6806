# Stage 5: the study's report: every fine-tuning cell and baseline, k-NN probes, data summary,
# tokenizer health and pretraining curves in results/<study>/report/ (and the study's MLflow parent run);
# one section per downstream set (its own grid and baselines, and their scores on the sets of evaluate_on).
DS_RESULTS = {name: [*DS_CELL_RESULTS[name], *DS_BASELINE_RESULTS[name]] for name in DOWNSTREAM}
# the label-budget protocol the report states: the corpus's subsets, or the first downstream set's
REPORT_SUBSETS = f"{FT_DIR}/subsets" if FT["on_corpus"] or not DOWNSTREAM else f"{DSR}/{next(iter(DOWNSTREAM))}/finetune/subsets"


rule report:
    input:
        results=CELL_RESULTS,
        baselines=BASELINE_RESULTS,
        downstream=[p for files in DS_RESULTS.values() for p in files],
        knn=KNN_RESULTS,
        summary=f"{R}/summary/summary.json",
        subsets=REPORT_SUBSETS,
        parent=f"{FT_DIR}/study_run.json",
        backbones=expand(BACKBONE_DIR, backbone=STUDY_BACKBONES),
        tokenizers=[f"{R}/tokenizers/{t}" for t in STUDY_TOKENIZERS],
        samples=SAMPLE_RESULTS,
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
        pretrain=lambda wc, input: " ".join(
            f"--pretrain {b}={d}" for b, d in zip(STUDY_BACKBONES, input.backbones)
        ),
        tokenizers=lambda wc, input: " ".join(
            f"--tokenizer {t}={d}" for t, d in zip(STUDY_TOKENIZERS, input.tokenizers)
        ),
        knn=lambda wc, input: ("--knn " + " ".join(input.knn)) if input.knn else "",
        samples=lambda wc, input: " ".join(f"--sample {Path(p).parent.name}={Path(p).parent}" for p in input.samples),
        figures=lambda wc, output: str(Path(output.efficiency).parent),
        config=json.dumps({"metric": EV["metric"], **EV["report"]}, sort_keys=True),
        study=STUDY,
        ablation=" ".join(f"--ablation-backbone {b}" for b in ABLATION["backbones"]),
        # the corpus-scaling curve: the first fine-tuned backbone (its whole corpus) and its smaller-corpus copies
        scaling=" ".join(f"--scaling-backbone {b}" for b in [FT_BACKBONES[0], *SCALING["backbones"]])
        if SCALING["backbones"]
        else "",
        downstream=" ".join(
            f"--downstream {name} {' '.join(files)} --downstream-metric {name}={DOWNSTREAM[name]['metric']}"
            for name, files in DS_RESULTS.items()
        ),
        pretraining=shlex.quote(
            "pretraining="
            + grid.pretraining_note(config["pretrain"], STUDY_BACKBONES, EV["report"]["pool_backbones"])
        ),
    log:
        f"{R}/logs/report.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "physfm report --results {input.results} {input.baselines} {params.knn} {params.downstream} "
        "--out {output.html} --figures {params.figures} "
        "--config {params.config:q} --summary {params.summary} {params.pretrain} {params.tokenizers} {params.samples} "
        "--subsets {input.subsets} --parent-run-file {input.parent} "
        "--study-info study={params.study} --study-info {params.pretraining} {params.ablation} {params.scaling} > {log} 2>&1"


# a study with nothing fine-tuned on the corpus or a downstream set (config/anomaly.yaml) has its anomaly report only
ALL_TARGETS += [f"{R}/report/report.html"] if FT["on_corpus"] or DOWNSTREAM else []
