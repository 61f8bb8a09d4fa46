r"""The evaluator's ceiling with its 95 % interval: the real target images scored on the test pairs.

Needs only the world, the event tables and the trained evaluator — no model — so the ceiling of a
config can be read (and an evaluator setting tried) in minutes before the long training runs:

    snakemake results/eval/evaluator results/events/triplets.parquet --profile profiles/local \
        --configfile configs/science.yaml
    python bench/evaluator_ceiling.py --configfile configs/science.yaml
    python bench/evaluator_ceiling.py --configfile configs/science.yaml --evaluator other/evaluator --aim 0.9

Scores `previous_image`, `real_target` and (synthetic world) `oracle` with the evaluate stage's own code:
the label sets fixed from the labels and the truth, the headline metrics and the paired patient-level
bootstrap (`evaluate.bootstrap` resamples, `evaluate.seed`). Prints each headline metric with its 95 %
interval, the share of resamples below `--aim`, and the real target's truth metrics per finding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from ehrxdiff_core.config import load_config, read_config_files
    from ehrxdiff_core.evaluation import comparisons
    from ehrxdiff_core.evaluation.common import evaluator_and_images
    from ehrxdiff_core.evaluation.evaluate import fixed_sets, oracle_and_true_change, truth_block
    from ehrxdiff_core.evaluation.evaluator import predict
    from ehrxdiff_core.evaluation.inputs import label_matrix, read_triplets
    from ehrxdiff_core.evaluation.truth import pair_truth

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="*", default=[], help="the run's config files (default: config.yaml)")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--evaluator", type=Path, help="an evaluator folder (default: RESULTS/eval/evaluator)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--aim", type=float, default=0.9, help="print the share of resamples below this value")
    args = ap.parse_args()
    cfg = load_config(read_config_files(args.configfile), check_paths=False)
    ev = cfg.evaluate
    res = args.results
    evaluator_dir = args.evaluator or res / "eval/evaluator"
    t0 = time.time()
    model, meta, labels, store = evaluator_and_images(evaluator_dir, res / f"images/cxr_{cfg.images.size}.h5", "cpu")
    trip = read_triplets(res / "events/triplets.parquet", labels)
    trip = trip[trip["split"] == args.split]
    keep = trip["prev_dicom_id"].map(lambda d: d in store) & trip["trg_dicom_id"].map(lambda d: d in store)
    trip = trip[keep].sort_values("pair_id").reset_index(drop=True)
    preds = {
        "previous_image": predict(model, meta, store.load(trip["prev_dicom_id"].tolist()), "cpu")["probs"],
        "real_target": predict(model, meta, store.load(trip["trg_dicom_id"].tolist()), "cpu")["probs"],
    }
    changes = {"previous_image": np.zeros_like(preds["real_target"])}
    changes["real_target"] = preds["real_target"] - preds["previous_image"]
    truth_path = res / "synthetic/truth.parquet"
    pt = pair_truth(truth_path, trip, labels) if truth_path.exists() else None
    trg, prev = label_matrix(trip, "trg_", labels), label_matrix(trip, "prev_", labels)
    _, sets, truth_sets = fixed_sets(trg, prev, labels, pt, ev)
    if pt is not None:
        preds["oracle"], changes["oracle"] = oracle_and_true_change(pt, labels)
    data = comparisons.HeadlineData(labels, trg, prev, sets, pt, truth_sets)
    everything = np.arange(len(trip))
    values = {n: comparisons.headline_values(data, preds[n], changes[n], everything) for n in preds}
    groups = trip["subject_id"].to_numpy()
    boot = comparisons.bootstrap(data, {n: (preds[n], changes[n]) for n in preds}, groups, ev.bootstrap, ev.seed)
    n_patients = len(np.unique(groups))
    iv = comparisons.intervals(values, boot, ev.bootstrap, n_patients)

    print(
        f"{len(trip)} {args.split} pairs from {n_patients} patients; evaluator {evaluator_dir} ({meta['arch']}); "
        f"{ev.bootstrap} patient-level resamples; {time.time() - t0:.0f} s\n"
    )
    print("label sets: " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in {**sets, **truth_sets}.items()))
    print(f"\n| metric | {' | '.join(preds)} | real_target: share of resamples < {args.aim} |")
    print("|---|" + "---|" * (len(preds) + 1))
    for metric in comparisons.HEADLINE_METRICS:
        cells = []
        for n in preds:
            e = iv[n][metric]
            if e["value"] is None:
                cells.append("–")
            else:
                ci = "no interval" if e["ci95"] is None else f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"
                cells.append(f"{e['value']:.3f} {ci}")
        draws = boot["real_target"][metric]
        draws = draws[np.isfinite(draws)]
        below = f"{(draws < args.aim).mean():.2f}" if len(draws) else "–"
        print(f"| {metric} | {' | '.join(cells)} | {below} |")
    if pt is None:
        return
    print("\n| real target, per finding | partial r | crossing AUROC | crossings up / down |")
    print("|---|---:|---:|---|")
    per = truth_block(pt, None, data, preds["real_target"], changes["real_target"], truth_sets)["per_finding"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for f, m in per.items():
        c = pt.change[f]
        r, a = m["partial_r"]["value"], m["crossing_auroc"]["value"]
        print(f"| {f} | {fmt(r)} | {fmt(a)} | {c['n_cross_up']} / {c['n_cross_down']} |")


if __name__ == "__main__":
    main()
