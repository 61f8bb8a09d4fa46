import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import DuckDBSettings, EventsConfig
from ehrxdiff_core.data.events import build_events
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
counts = build_events(
    Path(snakemake.input.tables[0]).parent,  # ehr/: the event tables and their dictionaries
    Path(snakemake.input.triplets),
    EventsConfig(**snakemake.params.events),
    DuckDBSettings(**snakemake.params.duck),
    Path(snakemake.output.events),
    Path(snakemake.output.triplets),
    meds=snakemake.params.meds,
)
log.info("events: %s", counts)
