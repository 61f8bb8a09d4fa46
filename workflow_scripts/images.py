import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import ImagesConfig
from ehrxdiff_core.data.images import build_image_store
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
counts = build_image_store(
    Path(snakemake.input.images),
    Path(snakemake.params.cxr_root),
    ImagesConfig(**snakemake.params.images),
    Path(snakemake.output.h5),
)
log.info("images: %s", counts)
