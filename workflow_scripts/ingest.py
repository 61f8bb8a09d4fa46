import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import DuckDBSettings
from ehrxdiff_core.data.ingest import ingest_table
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
rows = ingest_table(
    snakemake.wildcards.table,
    Path(snakemake.input.src),
    Path(snakemake.output[0]),
    DuckDBSettings(**snakemake.params.duck),
)
log.info("%s: %d rows", snakemake.wildcards.table, rows)
