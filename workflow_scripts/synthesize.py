import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.config import SyntheticConfig
from ehrxdiff_core.runlog import start_job
from ehrxdiff_core.synthetic import write_world

log = start_job(snakemake.log[0], snakemake.threads)
with atomic_dir(snakemake.params.root) as tmp:
    summary = write_world(Path(tmp), SyntheticConfig(**snakemake.params.cfg))
log.info("synthetic world written: %s", summary)
