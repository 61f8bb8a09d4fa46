"""`ehrxdiff` console script: the stand-alone entry points that do not need the workflow.

`ehrxdiff synth` writes the synthetic MIMIC world; `ehrxdiff check-config` validates the
config a run gets, exactly as the Snakefile does; `ehrxdiff to-meds` converts a synthetic world to MEDS.
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
    from ehrxdiff_core.config import DEMO_CONFIG, ConfigError, load_config, read_config_files

    names = " + ".join(args.config) if args.config else DEMO_CONFIG
    try:
        cfg = load_config(read_config_files(args.config))
    except ConfigError as err:
        print(f"{names}: {err}", file=sys.stderr)
        return 1
    if args.show:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    print(f"{names}: OK", file=sys.stderr if args.show else sys.stdout)
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

    p = sub.add_parser(
        "check-config",
        help="validate the config a run gets from these files (as `snakemake --configfile FILE...`; none: config.yaml)",
    )
    p.add_argument("config", nargs="*", help="config files, later ones merged over earlier ones")
    p.add_argument("--show", action="store_true", help="print the resolved config (every key, defaults filled in)")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("to-meds", help="convert a synthetic world to MEDS shards + an image manifest")
    p.add_argument("--world", required=True, help="folder written by `ehrxdiff synth`")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_to_meds)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
