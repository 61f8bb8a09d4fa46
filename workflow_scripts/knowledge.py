import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.runlog import start_job
from ehrxdiff_core.text.knowledge import build_knowledge

log = start_job(snakemake.log[0], snakemake.threads)
n = build_knowledge(Path(snakemake.input.d_items), Path(snakemake.input.d_labitems), Path(snakemake.output.knowledge))
log.info("knowledge: %d snippets", n)
