# Weakly supervised anomaly detection (CWoLa, config `anomaly`, docs/anomaly.md): a dijet sample (QCD background and
# an A -> B C resonance) generated and converted with the data rules, one CWoLa set per S/B and seed
# (physfm cwola-prepare: SR/SB region labels, signal injected from a pool disjoint from the evaluation signal),
# classifiers trained by the fine-tuning rule (scratch and the pretrained backbone, the same recipe and budget),
# scored by SIC on the truth-labelled evaluation set (physfm cwola-evaluate), one report (physfm cwola-report).
AN = config["anomaly"] if config["anomaly"]["enabled"] else None
DIJET_EVENT_BRANCHES = ["event_id", "jet_index", "event_mjj"]

if AN:
    AN_DIR = f"{R}/anomaly"
    # the dijet sample's data section: the study's generator keys under the anomaly's own, a fixed conversion
    _an = {
        "data": {
            "source": "generate",
            "format": "jetclass",
            "generate": {**config["data"]["generate"], "weights": [], **AN["generate"]},
            "convert": {
                "shard_events": config["data"]["convert"]["shard_events"],
                "labels": ["label_QCD", "label_Resonance"],
                "event_branches": DIJET_EVENT_BRANCHES,
                "split": {"train": 1.0, "val": 0.0, "test": 0.0},  # the events are partitioned by cwola-prepare
            },
        }
    }
    validate(_an, "../schemas/config.schema.yaml", set_default=True)
    AN_DATA = _an["data"]
    AN_SETS = f"{AN_DIR}/sets/sb{{sb}}/seed{{seed}}"
    AN_SB = {format(float(v), "g"): float(v) for v in AN["s_over_b"]}
    AN_RESULTS = [
        f"{AN_DIR}/sets/sb{sb}/seed{s}/{AN['backbone']}/{m}/sic.json" for sb in AN_SB for s in AN["seeds"] for m in AN["modes"]
    ]
    if AN["backbone"] not in config["pretrain"]["backbones"]:
        raise ValueError(f"anomaly.backbone {AN['backbone']!r} is not in pretrain.backbones")

    use rule generate as anomaly_generate with:
        output:
            directory(f"{AN_DIR}/raw"),
        params:
            what="jets",
            config=generator_settings(AN_DATA),
            track=track("anomaly_generate"),
        log:
            f"{R}/logs/anomaly/generate.log",

    use rule convert_part as anomaly_convert with:
        input:
            f"{AN_DIR}/raw",
        output:
            directory(f"{AN_DIR}/data"),
        params:
            input=lambda wc, input: input[0],
            format="jetclass",
            config=convert_settings(AN_DATA),
            group="",
            track=track("anomaly_convert"),
        log:
            f"{R}/logs/anomaly/convert.log",

    rule anomaly_prepare:
        input:
            f"{AN_DIR}/data",
        output:
            directory(f"{AN_SETS}/data"),
        wildcard_constraints:
            sb=r"[0-9.e+-]+",
        params:
            sb=lambda wc: AN_SB[wc.sb],
            config=json.dumps(AN["cwola"], sort_keys=True),
        log:
            f"{R}/logs/anomaly/prepare_sb{{sb}}_seed{{seed}}.log",
        conda:
            "../../envs/torch.yaml"
        shell:
            "physfm cwola-prepare --data {input} --out {output} --s-over-b {params.sb} --seed {wildcards.seed} "
            "--config {params.config:q} > {log} 2>&1"

    use rule label_subsets as anomaly_subsets with:
        input:
            f"{AN_SETS}/data",
        output:
            directory(f"{AN_SETS}/subsets"),
        params:
            # every labelled (region-labelled) event; the holdout protocol carves the validation part out of them
            config=lambda wc: json.dumps({"labels": ["all"], "seeds": [int(wc.seed)], "budget": FT["budget"]}, sort_keys=True),
        log:
            f"{R}/logs/anomaly/subsets_sb{{sb}}_seed{{seed}}.log",

    use rule finetune as anomaly_finetune with:
        input:
            data=f"{AN_SETS}/data",
            subsets=f"{AN_SETS}/subsets",
            backbone=BACKBONE_DIR,
            parent=f"{FT_DIR}/study_run.json",
        output:
            directory(f"{AN_SETS}/{{backbone}}/{{mode}}/model"),
        params:
            spec="all",
            run_name=lambda wc: f"cwola {wc.backbone} {wc.mode} S/B={wc.sb} seed={wc.seed}",
            config=lambda wc: json.dumps(grid.cell_settings(FT, wc.mode, config["pretrain"]), sort_keys=True),
            search="",
            backbone=lambda wc, input: input.backbone,
            task="classification",
            sources="",  # head inputs, if any, are computed in the job from its CWoLa set
            track=lambda wc: track("anomaly_finetune", wc),
        log:
            f"{R}/logs/anomaly/finetune_sb{{sb}}_seed{{seed}}_{{backbone}}_{{mode}}.log",

    rule anomaly_evaluate:
        input:
            model=f"{AN_SETS}/{{backbone}}/{{mode}}/model",
            data=f"{AN_SETS}/data",
        output:
            f"{AN_SETS}/{{backbone}}/{{mode}}/sic.json",
        threads: 1
        log:
            f"{R}/logs/anomaly/evaluate_sb{{sb}}_seed{{seed}}_{{backbone}}_{{mode}}.log",
        conda:
            "../../envs/torch.yaml"
        shell:
            "physfm cwola-evaluate --model {input.model} --data {input.data} --out {output} --threads {threads} "
            "> {log} 2>&1"

    rule anomaly_report:
        input:
            AN_RESULTS,
        output:
            html=f"{AN_DIR}/report/report.html",
            figure=f"{AN_DIR}/report/figures/sic_vs_sb.png",
            data=f"{AN_DIR}/report/anomaly.json",
        params:
            title=AN["title"],
        log:
            f"{R}/logs/anomaly/report.log",
        conda:
            "../../envs/torch.yaml"
        shell:
            "physfm cwola-report --results {input} --out {output.html} --title '{params.title}' > {log} 2>&1"

    ALL_TARGETS += [f"{AN_DIR}/report/report.html"]
