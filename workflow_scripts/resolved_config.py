import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import write_resolved_config
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
write_resolved_config(snakemake.params.config, Path(snakemake.output[0]))
log.info("resolved config: wrote %s", snakemake.output[0])
