import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.runlog import start_job
from ehrxdiff_core.text.knowledge import build_knowledge

log = start_job(snakemake.log[0], snakemake.threads)
files = {Path(p).stem: Path(p) for p in snakemake.input.dictionaries}  # ehr/<dictionary>.parquet
n = build_knowledge(files, Path(snakemake.output.knowledge))
log.info("knowledge: %d snippets", n)
