# ehrxdiff: previous chest X-ray + EHR events in between -> next chest X-ray, as one DAG.
# Rule logic lives in ehrxdiff_core; rules name inputs, outputs, params, resources, logs.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/text.smk"
include: "rules/models.smk"
include: "rules/controls.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.report.output.html,
        rules.evaluate.output.metrics,
