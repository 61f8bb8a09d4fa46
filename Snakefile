# ehrxdiff: previous chest X-ray + EHR events in between -> next chest X-ray, as one DAG.
# Rule logic lives in ehrxdiff_core; rules name inputs, outputs, params, resources, logs.
from snakemake.utils import min_version

min_version("9.0")


# The demo's config.yaml is the config only when no --configfile is given: a user's file is merged over
# the defaults of ehrxdiff_core/config.py, never over the demo's settings (`ehrxdiff check-config FILE`
# validates exactly that merge). `--config key=value` overrides either.
if not workflow.overwrite_configfiles:

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
