"""The `evaluate` stage: every method's predictions scored by the evaluator -> `eval/metrics.json`.

metrics.json: the typed layout of `artifacts/metrics.py` (`MetricsFile`): `methods` (one object per
method: the model, its controls, the real-target and oracle ceilings), `comparisons` (model minus each
control on the headline metrics, with paired patient-level bootstrap intervals and a verdict),
`label_sets` (fixed before scoring), `truth` and `settings`. Each method also carries `intervals`: its
headline metrics with their own 95 % interval from the same resamples (the ceilings included).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ehrxdiff_core.artifacts.metrics import MetricsFile
from ehrxdiff_core.config import EvaluateConfig
from ehrxdiff_core.device import resolve_device
from ehrxdiff_core.evaluation import comparisons, frechet, inception, metrics, xrv
from ehrxdiff_core.evaluation.common import evaluator_and_images, to_json, write_json
from ehrxdiff_core.evaluation.evaluator import predict
from ehrxdiff_core.evaluation.inputs import (
    InputError,
    label_matrix,
    read_images,
    read_manifest,
    read_triplets,
)
from ehrxdiff_core.evaluation.truth import DYNAMIC_MIN_CHANGE, PairTruth, pair_truth

log = logging.getLogger(__name__)

MODEL = "ehrxdiff"
DESCRIPTIONS = {
    "ehrxdiff": "the model: previous image + the events in between",
    "image_only": "the same LDM (same budget and seed) trained and sampled with every event masked",
    "previous_image": "the previous image as the prediction (a copy)",
    "previous_vae": "the previous image through the autoencoder: the floor any latent model starts from",
    "previous_blur": "the previous image blurred to the model's measured sharpness",
    "real_target": "the real target image: the evaluator's ceiling",
    "oracle": "scores = the target's hidden severities (synthetic world): the ceiling of each metric",
}


def _manifest_settings(manifest: pd.DataFrame) -> dict:
    def values(col):
        if col not in manifest:
            return None
        u = sorted(manifest[col].dropna().unique().tolist())
        return u if len(u) <= 10 else {"n_unique": len(u), "min": u[0], "max": u[-1]}

    out = {k: values(k) for k in ("sampler", "steps", "guidance", "compose", "change_blur_px")}
    first = manifest[manifest["seed_index"] == 0] if "seed_index" in manifest else manifest
    seeds = sorted(first["seed"].dropna().unique().tolist())
    out["seeds"] = seeds if len(seeds) <= 10 else {"n_unique": len(seeds), "min": seeds[0], "max": seeds[-1]}
    out["seed_indices"] = sorted(int(k) for k in manifest["seed_index"].unique())
    if "seconds" in manifest:
        out["seconds_per_image_mean"] = float(manifest["seconds"].mean()) if len(manifest) else None
    return out


def _fid_block(name: str, feats: dict[str, np.ndarray], halves, extractor: str, extra: dict) -> dict:
    res = frechet.cross_half_fd(feats[name], feats["real_target"], halves)
    return {"computed": res.get("value") is not None, "extractor": extractor, **extra, **res}


def _seed_averaged(
    model, meta, folder: Path, manifest: pd.DataFrame, ids: list[str], size: int, device: str
) -> tuple[dict, np.ndarray, dict]:
    """Evaluator outputs averaged over every seed of each pair, the seed-0 images, and seeds per pair.

    Averaging the scores of several samples of one pair estimates the evaluator's expectation under the
    model's distribution for that pair, instead of one draw's noise. `age_per_seed` keeps each seed's age
    reads apart (NaN where a pair lacks that seed), for the age r of single samples.
    """
    pos = {p: i for i, p in enumerate(ids)}
    man = manifest[manifest["pair_id"].isin(pos)]
    sums: dict[str, np.ndarray] = {}
    count = np.zeros(len(ids))
    per_seed_age: list[np.ndarray] = []
    seed0 = None
    for k, rows in sorted(man.groupby("seed_index"), key=lambda kv: kv[0]):
        rows = rows.drop_duplicates("pair_id")
        imgs = read_images(folder, rows["path"].tolist(), size)
        at = rows["pair_id"].map(pos).to_numpy()
        out = predict(model, meta, imgs, device)
        if k == 0:
            seed0 = np.empty((len(ids), size, size), np.uint8)
            seed0[at] = imgs
            features = np.empty((len(ids), out["features"].shape[1]))
            features[at] = out["features"]
        for key in ("probs", "p_male", "age"):
            if key not in sums:
                sums[key] = np.zeros((len(ids), *out[key].shape[1:]))
            np.add.at(sums[key], at, out[key])
        count[at] += 1
        age = np.full(len(ids), np.nan)
        age[at] = out["age"]
        per_seed_age.append(age)
    averaged = {key: v / count.reshape(-1, *[1] * (v.ndim - 1)) for key, v in sums.items()}
    averaged["age_per_seed"] = per_seed_age
    averaged["features"] = features  # realism: one sample (seed 0) per pair, not an average of images
    return averaged, seed0, {"min": int(count.min()), "max": int(count.max())}


def _age_r(predicted: np.ndarray, ages: np.ndarray) -> dict:
    """Pearson r of the evaluator's age reads with the recorded ages, over the pairs that have both."""
    n = int((np.isfinite(predicted) & np.isfinite(ages)).sum())
    if n >= 3:
        return metrics.pearson(predicted, ages)
    return {
        "value": None,
        "reason": f"only {n} scored targets have an age and an age read (the input gives no age for the rest; "
        "cohort.min_age: null keeps them)",
    }


def truth_block(
    truth: PairTruth | None,
    truth_reason: str | None,
    data: comparisons.HeadlineData,
    probs: np.ndarray,
    change: np.ndarray | None,
    label_sets: dict[str, list[str]],
) -> dict:
    """One method's truth metrics: per finding, the partial r of `change` against the true change given the
    previous severity and the crossing AUROC of `probs`, and their macros over the fixed `label_sets`."""
    if truth is None:
        return {"computed": False, "reason": truth_reason}
    per = {}
    for f in truth.findings:
        j, k = data.labels.index(f), truth.column(f)
        sp, st = truth.prev[:, k], truth.trg[:, k]
        per[f] = {
            "threshold": truth.thresholds[f],
            "partial_r": metrics.partial_correlation(change[:, j], st - sp, sp),
            "crossing_auroc": metrics.crossing_auroc(probs[:, j], sp, st, truth.thresholds[f]),
        }
    return {
        "computed": True,
        "per_finding": per,
        "partial_r_macro": metrics.macro_over({f: v["partial_r"] for f, v in per.items()}, label_sets["partial_r"]),
        "crossing_auroc_macro": metrics.macro_over(
            {f: v["crossing_auroc"] for f, v in per.items()}, label_sets["crossing_auroc"]
        ),
    }


def _check_same_values(methods: dict, values: dict) -> None:
    """The method blocks (sklearn's AUROC) and the bootstrap's fast path must agree on the full sample."""
    for name, block in methods.items():
        got = {f"auroc_{s}_macro": block["auroc"][s]["macro"]["value"] for s in ("diff", "all", "same")}
        if block["truth"]["computed"]:
            got["truth_partial_r_macro"] = block["truth"]["partial_r_macro"]["value"]
            got["truth_crossing_auroc_macro"] = block["truth"]["crossing_auroc_macro"]["value"]
        for metric, v in got.items():
            w = values[name][metric]
            if (v is None) != (w is None) or (v is not None and abs(v - w) > 1e-9):
                raise AssertionError(f"evaluate: {name}.{metric} is {v} in its block but {w} in the comparisons")


def fixed_sets(trg, prev, labels, pt: PairTruth | None, cfg: EvaluateConfig):
    """The candidates, the AUROC label sets and the truth label sets, fixed from labels and truth alone."""
    candidates = pt.dynamic if pt is not None else list(labels)
    label_sets = comparisons.fixed_label_sets(
        trg, prev, labels, candidates, cfg.min_label_positives, cfg.min_label_negatives
    )
    truth_sets = (
        comparisons.truth_label_sets(pt, cfg.min_label_positives, cfg.min_label_negatives)
        if pt is not None
        else {m: [] for m in comparisons.TRUTH_METRICS}
    )
    return candidates, label_sets, truth_sets


def oracle_and_true_change(pt: PairTruth, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's scores (the target's hidden severities) and the true change, (N, L), NaN elsewhere."""
    oracle = np.full((len(pt.prev), len(labels)), np.nan)
    true_change = np.full_like(oracle, np.nan)
    for f in pt.findings:
        j, k = labels.index(f), pt.column(f)
        oracle[:, j], true_change[:, j] = pt.trg[:, k], pt.trg[:, k] - pt.prev[:, k]
    return oracle, true_change


def evaluate(
    samples: dict[str, Path],
    images_h5,
    triplets,
    evaluator_dir,
    cfg: EvaluateConfig,
    run_info: dict,
    out_json,
    device="auto",
    split="test",
    truth=None,
    *,
    model_name: str = MODEL,
    _inception_sha256_prefix: str = inception.FID_WEIGHTS_SHA256_PREFIX,
) -> dict:
    """Score the model and every control on the same `split` pairs; write `eval/metrics.json`.

    `samples` maps a method name to its samples folder (the model and the image controls);
    `previous_image`, `real_target` and (with `truth`, the synthetic world) `oracle` are added here.
    """
    t0 = time.time()
    device = resolve_device(device)
    model, meta, labels, store = evaluator_and_images(evaluator_dir, images_h5, device)
    if model_name not in samples:
        raise ValueError(f"samples: the model {model_name!r} has no samples folder (got {list(samples)})")
    reserved = {"previous_image", "real_target", "oracle"} & set(samples)
    if reserved:
        raise ValueError(f"samples: the names {sorted(reserved)} are reserved for the built-in baselines")
    trip = read_triplets(triplets, labels)
    trip = trip[trip["split"] == split]
    if trip.empty:
        raise InputError(f"{triplets}: no pairs with split == {split!r}")

    keep = trip["prev_dicom_id"].map(lambda d: d in store) & trip["trg_dicom_id"].map(lambda d: d in store)
    with_pixels = set(trip.loc[keep, "pair_id"])
    pair_ids = set(with_pixels)
    coverage, manifests = {"n_split_pairs": len(trip), "n_without_real_pixels": int((~keep).sum())}, {}
    for name, folder in samples.items():
        folder = Path(folder)
        man = read_manifest(folder)
        have = {p for p in man.loc[man["seed_index"] == 0, "pair_id"] if (folder / f"{p}.png").exists()}
        coverage[f"n_without_{name}"] = len(with_pixels - have)
        manifests[name] = man
        pair_ids &= have
    if not pair_ids:
        raise InputError(
            f"no {split} pair of {triplets} has real images and a sample in every samples folder {list(samples)}"
        )
    trip = trip[trip["pair_id"].isin(pair_ids)].sort_values("pair_id").reset_index(drop=True)
    ids = trip["pair_id"].tolist()
    log.info(
        "evaluate: %d %s pairs from %d patients; methods %s",
        len(ids),
        split,
        trip["subject_id"].nunique(),
        list(samples),
    )

    images: dict[str, np.ndarray] = {}
    preds: dict[str, dict] = {}
    n_seeds: dict[str, dict] = {}
    for name, folder in samples.items():
        preds[name], images[name], n_seeds[name] = _seed_averaged(
            model, meta, Path(folder), manifests[name], ids, store.size, device
        )
    images["previous_image"] = store.load(trip["prev_dicom_id"].tolist())
    images["real_target"] = store.load(trip["trg_dicom_id"].tolist())
    for name in ("previous_image", "real_target"):
        preds[name] = predict(model, meta, images[name], device)
    halves = frechet.patient_halves(trip["subject_id"].to_numpy(), cfg.seed)
    trg, prev = label_matrix(trip, "trg_", labels), label_matrix(trip, "prev_", labels)

    # ground truth (synthetic world only), the label sets (fixed from labels and truth alone), the oracle
    pt, truth_reason = None, None
    if truth is None:
        truth_reason = "no hidden ground truth (real data): truth-based metrics are defined on the synthetic world only"
    else:
        pt = pair_truth(truth, trip, labels)
        if pt.n_pairs_with_truth == 0:
            pt, truth_reason = None, f"{truth}: no scored pair has hidden severities for both images"
    candidates, label_sets, truth_sets = fixed_sets(trg, prev, labels, pt, cfg)
    rule = (
        f"{'dynamic findings' if pt is not None else 'all evaluator labels (no ground truth to tell dynamic ones)'}"
        " with "
        f">= {cfg.min_label_positives} positive and >= {cfg.min_label_negatives} negative targets in the subset; "
        f"truth metrics: dynamic findings with >= {cfg.min_label_positives} upward and >= {cfg.min_label_negatives} "
        "downward threshold crossings (crossing AUROC) or >= their sum of pairs (partial correlation)"
    )
    log.info("evaluate: label sets %s; truth sets %s", label_sets, truth_sets)
    if pt is not None:
        oracle, true_change = oracle_and_true_change(pt, labels)
        preds["oracle"] = {"probs": oracle}

    data = comparisons.HeadlineData(labels, trg, prev, label_sets, pt, truth_sets)
    base = preds["previous_image"]["probs"]
    changes = {name: p["probs"] - base for name, p in preds.items()}
    if pt is not None:
        changes["oracle"] = true_change

    feats = {"evaluator": {k: preds[k]["features"] for k in images}}
    fid_status: dict[str, dict] = {}
    if cfg.inception_weights:
        net = inception.load_fid_inception(cfg.inception_weights, _inception_sha256_prefix)
        feats["inception"] = {k: inception.inception_features(net, v, device) for k, v in images.items()}
        del net
    else:
        fid_status["inception"] = {"computed": False, "reason": inception.NOT_SET_REASON}
    reason = xrv.unavailable_reason(cfg.xrv_weights)
    if reason is None:
        net = xrv.load_xrv_densenet(cfg.xrv_weights)
        feats["xrv"] = {k: xrv.xrv_features(net, v, device) for k, v in images.items()}
        del net
    else:
        fid_status["xrv"] = {"computed": False, "reason": reason}
    extractors = {
        "evaluator": (
            f"self-trained evaluator ({meta['arch']}) penultimate layer; NOT comparable to published FID",
            {},
        ),
        "inception": (
            "pytorch-fid InceptionV3 pool3, FID weights 6726825d",
            {"preprocessing": inception.PREPROCESSING},
        ),
        "xrv": ("torchxrayvision DenseNet121-res224-all avg-pooled features", {}),
    }

    order = [model_name, *[n for n in samples if n != model_name], "previous_image", "real_target"]
    order += ["oracle"] if pt is not None else []
    kinds = {n: "control" for n in order}
    kinds.update({model_name: "model", "real_target": "ceiling", "oracle": "ceiling"})
    ages = trip["age"].astype("float64").to_numpy()
    methods = {}
    for name in order:
        p = preds[name]
        image_based = name != "oracle"
        na = {"value": None, "reason": "the oracle has no image"}
        if image_based:
            fid = {ext: _fid_block(name, feats[ext], halves, *extractors[ext]) for ext in feats}
            fid.update(fid_status)
        else:
            fid = {
                ext: {"computed": False, "reason": "the oracle has no image"}
                for ext in ("evaluator", "inception", "xrv")
            }
        methods[name] = {
            "kind": kinds[name],
            "description": DESCRIPTIONS.get(name, "generated images"),
            "n_pairs": len(ids),
            "n_seeds": n_seeds.get(name),
            "generation": _manifest_settings(manifests[name][manifests[name]["pair_id"].isin(pair_ids)])
            if name in samples
            else None,
            "auroc": metrics.finding_aurocs(p["probs"], trg, prev, labels, label_sets),
            "sex_auroc": metrics.sex_auroc(p["p_male"], trip["gender"].to_numpy()) if image_based else na,
            "age_pearson_r": _age_r(p["age"], ages) if image_based else na,
            "age_pearson_r_per_seed": [_age_r(a, ages) for a in p["age_per_seed"]] if "age_per_seed" in p else None,
            "age_mae_years": float(np.nanmean(np.abs(p["age"] - ages)))
            if image_based and np.isfinite(ages).any()
            else None,
            "fid": fid,
            "truth": truth_block(pt, truth_reason, data, p["probs"], changes[name], truth_sets),
        }

    groups = trip["subject_id"].to_numpy()
    values = {n: comparisons.headline_values(data, preds[n]["probs"], changes[n], np.arange(len(ids))) for n in order}
    _check_same_values(methods, values)
    controls = [n for n in order if kinds[n] == "control"]
    t_boot = time.time()
    boot = comparisons.bootstrap(
        data, {n: (preds[n]["probs"], changes[n]) for n in order}, groups, cfg.bootstrap, cfg.seed
    )
    log.info("evaluate: %d paired patient-level resamples in %.1f s", cfg.bootstrap, time.time() - t_boot)
    n_patients = int(len(np.unique(groups)))
    comps = comparisons.compare(model_name, controls, values, boot, cfg.bootstrap, n_patients)
    for name, per_metric in comparisons.intervals(values, boot, cfg.bootstrap, n_patients).items():
        methods[name]["intervals"] = per_metric

    truth_info: dict = {"used": pt is not None}
    if pt is None:
        truth_info["reason"] = truth_reason
    else:
        truth_info.update(
            n_pairs_with_truth=pt.n_pairs_with_truth,
            findings=pt.change,
            dynamic=pt.dynamic,
            dynamic_rule=f"mean |target - previous| hidden severity over the scored pairs >= {DYNAMIC_MIN_CHANGE}",
        )
    settings = {
        "split": split,
        "n_pairs": len(ids),
        "n_patients": int(trip["subject_id"].nunique()),
        "labels": list(labels),
        "evaluate": cfg.model_dump(mode="json"),
        "run_info": run_info,
        "evaluator": {
            "dir": str(evaluator_dir),
            "arch": meta["arch"],
            "image_size": meta["image_size"],
            "feature_dim": meta["feature_dim"],
            "n_train_images": meta.get("n_train_images"),
        },
        "fid_protocol": frechet.PROTOCOL,
        "fid_halves": {"n_a": len(halves[0]), "n_b": len(halves[1]), "seed": cfg.seed},
        "fid_images": "seed 0 of each generated pair (scores are averaged over seeds; features are not)",
        "subsets": "per label: all = target label known; diff = target != previous (previous NULL -> 0); "
        "same = target == previous",
        "bootstrap": {
            "n_boot": cfg.bootstrap,
            "resampling": "patients with replacement, paired across methods",
            "seed": cfg.seed,
        },
        "coverage": coverage,
        "seconds": time.time() - t0,
    }
    result = MetricsFile.model_validate(
        to_json(
            {
                "model": model_name,
                "methods": methods,
                "comparisons": comps,
                "headline_metrics": dict(comparisons.METRIC_TEXT),
                "label_sets": {"rule": rule, "auroc": label_sets, "truth": truth_sets, "candidates": candidates},
                "truth": truth_info,
                "settings": settings,
            }
        )
    )
    payload = result.model_dump(mode="json")
    write_json(payload, Path(out_json))
    for name, entries in comps.items():
        for e in entries:
            ci = e["ci95"]
            log.info(
                "evaluate: %s %s delta=%s ci95=%s -> %s",
                name,
                e["metric"],
                None if e["delta"] is None else round(e["delta"], 4),
                None if ci is None else [round(c, 4) for c in ci],
                e["verdict"],
            )
    return payload
