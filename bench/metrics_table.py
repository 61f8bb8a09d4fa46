"""Print the headline tables of a run's `eval/metrics.json` as Markdown (for the README and bench notes).

python bench/metrics_table.py results/eval/metrics.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ehrxdiff_core.artifacts.metrics import read_metrics


def fmt(v, digits: int = 3) -> str:
    if isinstance(v, list):  # one entry per seed
        return " / ".join(fmt(e.value, digits) for e in v) if v else "–"
    return "–" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    mf = read_metrics(ap.parse_args().metrics)
    st = mf.settings
    print(
        f"{st['n_pairs']} {st['split']} pairs from {st['n_patients']} patients; label sets: "
        + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in mf.label_sets.auroc.items())
        + "; "
        + "; ".join(f"truth {k}: {', '.join(v) or 'none'}" for k, v in mf.label_sets.truth.items())
        + "\n"
    )
    names = list(mf.methods)
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for metric in mf.headline_metrics:
        print(f"| {metric} | " + " | ".join(fmt(mf.value(n, metric)) for n in names) + " |")
    rows = {
        "sex AUROC": lambda m: m.sex_auroc.value,
        "age r": lambda m: m.age_pearson_r.value,
        "age r, single seeds": lambda m: m.age_pearson_r_per_seed,
        "FD evaluator": lambda m: m.fid["evaluator"].value if "evaluator" in m.fid else None,
    }
    for label, get in rows.items():
        print(
            f"| {label} | "
            + " | ".join(fmt(get(mf.methods[n]), 2 if label.startswith("FD") else 3) for n in names)
            + " |"
        )
    floor = mf.methods["real_target"].fid.get("evaluator")
    print(f"\nFD floor (real vs real): {fmt(floor.floor if floor else None, 2)}\n")
    controls = [k.split("_vs_", 1)[1] for k in mf.comparisons]
    print(f"| {mf.model} − control | " + " | ".join(controls) + " |")
    print("|---|" + "---|" * len(controls))
    for metric in mf.headline_metrics:
        cells = []
        for c in controls:
            e = mf.comparison(c, metric)
            ci = "no interval" if e.ci95 is None else f"[{e.ci95[0]:+.3f}, {e.ci95[1]:+.3f}]"
            cells.append("–" if e.delta is None else f"{e.delta:+.3f} {ci} {e.verdict}")
        print(f"| {metric} | " + " | ".join(cells) + " |")
    n_boot = next((e.n_boot for es in mf.comparisons.values() for e in es), 0)
    print(f"\n({n_boot} paired patient-level bootstrap resamples)\n")
    print("| metric: value [95 % interval] | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for metric in mf.headline_metrics:
        cells = []
        for n in names:
            iv = mf.interval(n, metric)
            if iv is None or iv.value is None:
                cells.append("–")
            else:
                ci = "no interval" if iv.ci95 is None else f"[{iv.ci95[0]:.3f}, {iv.ci95[1]:.3f}]"
                cells.append(f"{iv.value:.3f} {ci}")
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
