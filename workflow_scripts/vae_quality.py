import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.evaluation.controls import vae_quality
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
result = vae_quality(
    Path(snakemake.input.images),
    Path(snakemake.input.cohort),
    Path(snakemake.input.vae),
    Path(snakemake.input.evaluator),
    Path(snakemake.output.json),
    device=compute.device,
)
log.info(
    "vae_quality: gate %s (%s)",
    "passed" if result["gate"]["passed"] else "FAILED",
    "; ".join(result["gate"]["reasons"]) or "all checks passed",
)
