"""`ehrxdiff` console script: the stand-alone entry points that do not need the workflow.

`ehrxdiff synth` writes the synthetic MIMIC world; `ehrxdiff check-config` validates a config
file exactly as the Snakefile does; `ehrxdiff to-meds` converts a synthetic world to MEDS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _cmd_synth(args: argparse.Namespace) -> int:
    from ehrxdiff_core.atomic import atomic_dir
    from ehrxdiff_core.config import SyntheticConfig
    from ehrxdiff_core.synthetic import write_world

    overrides = {"patients": args.patients, "seed": args.seed}
    if args.no_images:
        overrides["write_images"] = False
    cfg = SyntheticConfig(**overrides)
    with atomic_dir(args.out) as tmp:
        summary = write_world(Path(tmp), cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from ehrxdiff_core.config import ConfigError, load_config

    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    try:
        load_config(raw)
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def _cmd_to_meds(args: argparse.Namespace) -> int:
    from ehrxdiff_core.data.meds_export import synthetic_to_meds

    summary = synthetic_to_meds(Path(args.world), Path(args.out))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ehrxdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a MIMIC-shaped synthetic world with ground truth")
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-images", action="store_true", help="skip the JPGs (data benchmarks)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("check-config", help="validate a config file as the Snakefile does")
    p.add_argument("config")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("to-meds", help="convert a synthetic world to MEDS shards + an image manifest")
    p.add_argument("--world", required=True, help="folder written by `ehrxdiff synth`")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_to_meds)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
