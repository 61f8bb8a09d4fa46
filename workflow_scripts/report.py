import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import ReportConfig
from ehrxdiff_core.evaluation.report import ReportInputs, build_report
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
inputs = ReportInputs(**{f.name: Path(snakemake.input[f.name]) for f in fields(ReportInputs)})
build_report(inputs, ReportConfig(**snakemake.params.report), Path(snakemake.output.html))
log.info("report: wrote %s", snakemake.output.html)
