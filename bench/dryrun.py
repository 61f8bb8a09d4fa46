"""Time `snakemake -n` on a fully built DAG (target ≤ 3 s), beside the cost of starting Snakemake at all.

    python bench/dryrun.py --directory /path/to/a/finished/run [--configfile config.yaml] [--repeat 5]

The baseline in the same run is `snakemake --version` (interpreter + import); the ratio says how much of
a dry run is the workflow itself (config validation, DAG, input checksums) rather than start-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--directory", required=True, help="working folder of a finished run (holds results/)")
    ap.add_argument("--configfile", default=str(REPO / "config.yaml"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    dry = [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        args.directory,
        "--configfile",
        args.configfile,
        "--cores",
        "2",
        "--dry-run",
    ]
    _, out = timed(dry)
    if "Nothing to be done" not in out:
        raise SystemExit(f"{args.directory} is not fully built: a dry run plans jobs\n{out[-3000:]}")
    base = [timed([SNAKEMAKE, "--version"])[0] for _ in range(args.repeat)]
    runs = [timed(dry)[0] for _ in range(args.repeat)]
    b, r = statistics.median(base), statistics.median(runs)
    print(f"snakemake --version (start-up baseline): median {b:.2f} s over {args.repeat}")
    print(
        f"snakemake -n on the built DAG:           median {r:.2f} s over {args.repeat} (min "
        f"{min(runs):.2f}, max {max(runs):.2f})"
    )
    print(f"ratio dry-run / start-up: {r / b:.1f}x; target <= 3 s: {'met' if r <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
