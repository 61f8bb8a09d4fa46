import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import CohortConfig, DuckDBSettings, load_config
from ehrxdiff_core.data.cohort import build_cohort
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
# Training, the autoencoder gate and sampling read these splits; an empty one fails here, at the first
# stage that knows the pairs. Read from the config, not passed as a param: the check does not change the
# cohort, so sampling another split must not rebuild the cohort and retrain every model downstream of it.
required_splits = ("train", "valid", load_config(snakemake.config, check_paths=False).sample.split)
counts = build_cohort(
    Path(snakemake.input.patients).parent,
    CohortConfig(**snakemake.params.cohort),
    DuckDBSettings(**snakemake.params.duck),
    Path(snakemake.output.images),
    Path(snakemake.output.triplets),
    required_splits=tuple(dict.fromkeys(required_splits)),
)
log.info("cohort: %s", counts)
