"""A MIMIC-shaped synthetic world (MIMIC-IV hosp/icu + MIMIC-CXR-JPG) generated from a hidden clinical process.

Entry point: `write_world(out_dir, cfg)`. `truth.parquet` holds the latent severities behind every image,
so models and evaluations can be scored against ground truth.
"""

from .process import FINDINGS
from .world import write_world

__all__ = ["FINDINGS", "write_world"]
