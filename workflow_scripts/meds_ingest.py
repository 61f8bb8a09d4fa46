import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import DuckDBSettings, MedsSource
from ehrxdiff_core.data.meds import meds_to_tables
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
counts = meds_to_tables(
    MedsSource(**snakemake.params.meds), DuckDBSettings(**snakemake.params.duck), Path(snakemake.params.out)
)
log.info("meds_ingest: %s", counts)
