import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.evaluation.controls import vae_quality
from ehrxdiff_core.runlog import device_from_config, start_job

log = start_job(snakemake.log[0], snakemake.threads)
result = vae_quality(
    Path(snakemake.input.images),
    Path(snakemake.input.cohort),
    Path(snakemake.input.vae),
    Path(snakemake.input.evaluator),
    Path(snakemake.output.json),
    device=device_from_config(snakemake.config.get("compute")),
)
log.info("vae_quality: gate %s (%s)", "passed" if result["gate"]["passed"] else "FAILED",
         "; ".join(result["gate"]["reasons"]) or "all checks passed")
