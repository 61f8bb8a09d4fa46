import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import CohortConfig, DuckDBSettings
from ehrxdiff_core.data.cohort import build_cohort, required_splits
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
counts = build_cohort(
    Path(snakemake.input.patients).parent,
    CohortConfig(**snakemake.params.cohort),
    DuckDBSettings(**snakemake.params.duck),
    Path(snakemake.output.images),
    Path(snakemake.output.triplets),
    required_splits=required_splits(snakemake.config),  # from the config, not a param: see there
)
log.info("cohort: %s", counts)
