import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import RagConfig, TextConfig
from ehrxdiff_core.runlog import compute_settings, start_job
from ehrxdiff_core.text.index import build_rag_index

log = start_job(snakemake.log[0], snakemake.threads)
# Only the encoder and index settings: retrieval-time settings (top_k, template) do not rebuild the index.
cfg = TextConfig(encoder=snakemake.params.encoder, rag=RagConfig(index=snakemake.params.index))
info = build_rag_index(
    Path(snakemake.input.knowledge), cfg, Path(snakemake.output.index), device=compute_settings(snakemake.config).device
)
log.info("rag index: %s", info)
