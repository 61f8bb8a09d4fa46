import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.evaluation.report import build_report
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
build_report(Path(snakemake.params.results), snakemake.params.config, Path(snakemake.output.html))
log.info("report: wrote %s", snakemake.output.html)
