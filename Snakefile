# physfm: the study's DAG. Each stage's rules live in workflow/rules/<stage>.smk.
#   snakemake --cores 2 all                                  # default study, config/config.yaml
#   snakemake --cores 2 all --configfile config/smoke.yaml   # the 2-minute smoke study
#   snakemake --profile slurm all                            # on a SLURM cluster
# A --configfile replaces config/config.yaml (it is not merged into it): keys it leaves out take the
# defaults of workflow/schemas/config.schema.yaml. --config KEY=VALUE edits whichever file is used.

if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/anomaly.smk"


onstart:
    # Create the MLflow store and experiment once, before jobs run in parallel.
    init_tracking_store()


rule all:
    input:
        ALL_TARGETS,
    default_target: True
