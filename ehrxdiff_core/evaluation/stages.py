"""Entry points of the evaluation stages, called by the workflow scripts.

`train_evaluator` -> `eval/evaluator/`, `evaluate` -> `eval/metrics.json`,
`build_report` (re-exported from `report`) -> `eval/report.html`.

metrics.json layout (the design's contract: one object per method): top-level keys
`ehrxdiff` (and `image_only` when trained), `previous_image`, `real_target`, each with `kind`, `n_pairs`,
`generation` (manifest seeds/sampler/steps/guidance), `auroc.{all|diff|same}.{per_label.<label>|micro|macro}`
(`value` or null + `reason`, `n_pos`/`n_neg`), `sex_auroc`, `age_pearson_r`, `age_mae_years`,
`fid.{evaluator|inception|xrv}` (`value`, `floor`, `n_a`/`n_b`, `dim`, `protocol`, or `computed: false` + `reason`),
and `settings` (split, N, labels, evaluate config, run_info, evaluator, FID protocol, coverage; the same object
for every method). The model's object also holds `vs_previous_image`: Diff macro AUROC of the model,
previous_image and real_target, the delta and its bootstrap interval. `metrics_parts` reads it back.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrxdiff_core.atomic import atomic_dir, atomic_path
from ehrxdiff_core.config import EvaluateConfig, EvaluatorConfig
from ehrxdiff_core.evaluation import frechet, inception, metrics, xrv
from ehrxdiff_core.evaluation.evaluator import EvaluatorNet, load_evaluator, predict, save_evaluator
from ehrxdiff_core.evaluation.evaluator_training import train_loop
from ehrxdiff_core.evaluation.inputs import (
    InputError,
    label_matrix,
    open_images,
    read_cohort_images,
    read_manifest,
    read_pngs,
    read_table,
    read_triplets,
    truth_severity_columns,
)
from ehrxdiff_core.evaluation.plots import loss_curve_png
from ehrxdiff_core.evaluation.report import build_report  # noqa: F401  (entry point re-exported)
from ehrxdiff_core.labels import EVAL_LABELS

PRELOAD_BYTES = 2 << 30  # train images up to 2 GiB are held in memory; larger sets are read per batch


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def to_json(obj):
    """numpy scalars/arrays to plain Python; NaN/inf must never reach the JSON (they become None)."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json(obj), indent=2, allow_nan=False))


# ------------------------------------------------------------------------------------ train_evaluator


def _batch_loader(store, dicom_ids: list[str]):
    ids = np.asarray(dicom_ids, dtype=object)
    if len(ids) * store.size * store.size <= PRELOAD_BYTES:
        bank = store.load(list(ids))
        return lambda idx: bank[idx]

    def load(idx):
        uniq, inverse = np.unique(idx, return_inverse=True)
        return store.load(list(ids[uniq]))[inverse]

    return load


def _targets(df: pd.DataFrame, labels, age_mean: float, age_std: float) -> dict[str, np.ndarray]:
    g = df["gender"].astype(object).to_numpy()
    male = np.where(g == "M", 1.0, np.where(g == "F", 0.0, np.nan))
    age = df["age"].astype("float64").to_numpy()
    return {"findings": label_matrix(df, "", labels), "male": male, "age_z": (age - age_mean) / age_std}


def _quality(probs_out: dict, df: pd.DataFrame, labels) -> dict:
    """Evaluator scores on real images of one split: the ceiling for generated images."""
    y = label_matrix(df, "", labels)
    age = df["age"].astype("float64").to_numpy()
    return {
        "n_images": len(df),
        "auroc": metrics.finding_aurocs(probs_out["probs"], y, y, labels)["all"],
        "sex_auroc": metrics.sex_auroc(probs_out["p_male"], df["gender"].to_numpy()),
        "age_pearson_r": metrics.pearson(probs_out["age"], age),
        "age_mae_years": float(np.nanmean(np.abs(probs_out["age"] - age))) if len(df) else None,
    }


def _truth_recovery(truth_path: Path, scored: pd.DataFrame, out: dict, labels) -> dict:
    """Spearman/Pearson between the evaluator's finding probability and the hidden severity, per finding."""
    truth = read_table(truth_path, ["dicom_id"], "synthetic truth table")
    sev_cols = truth_severity_columns(truth)
    if not sev_cols:
        raise InputError(f"{truth_path}: no float severity column found")
    probs = pd.DataFrame(out["probs"], columns=list(labels))
    probs["dicom_id"] = scored["dicom_id"].to_numpy()
    merged = probs.merge(truth[["dicom_id", *sev_cols]], on="dicom_id", how="inner", suffixes=("", "_severity"))
    result = {"n_images": len(merged), "splits": sorted(scored["split"].unique().tolist()), "findings": {}}
    for col in sev_cols:
        if col not in labels:
            result["findings"][col] = {"computed": False, "reason": f"no evaluator head for {col} (not in EVAL_LABELS)"}
            continue
        sev = merged[f"{col}_severity"] if f"{col}_severity" in merged else merged[col]
        result["findings"][col] = {
            "computed": True,
            "spearman": metrics.spearman(merged[col].to_numpy(), sev.to_numpy()),
            "pearson": metrics.pearson(merged[col].to_numpy(), sev.to_numpy()),
        }
    return result


def train_evaluator(images_h5, cohort_images, cfg: EvaluatorConfig, out_dir, device="auto", truth=None) -> dict:
    """Train the evaluator on real train-split images; write weights, curves and its own test scores."""
    t0 = time.time()
    labels = EVAL_LABELS
    device = resolve_device(device)
    store = open_images(images_h5)
    cohort = read_cohort_images(cohort_images, labels)
    in_store = cohort["dicom_id"].map(lambda d: d in store)
    n_missing = int((~in_store).sum())
    cohort = cohort[in_store].reset_index(drop=True)
    train = cohort[cohort["split"] == "train"].reset_index(drop=True)
    if len(train) < 2:
        raise InputError(f"{cohort_images}: fewer than 2 train-split images with pixels in {images_h5}")
    age = train["age"].astype("float64")
    age_mean = float(age.mean()) if age.notna().any() else 0.0
    age_std = float(age.std()) if age.notna().sum() > 1 and age.std() > 0 else 1.0

    torch.manual_seed(cfg.train.seed)
    model = EvaluatorNet(cfg.arch, len(labels), cfg.width)
    history = train_loop(model, _batch_loader(store, train["dicom_id"].tolist()), _targets(train, labels, age_mean, age_std),
                         cfg.train, device, use_augment=cfg.augment)
    meta = {"arch": cfg.arch, "width": cfg.width, "labels": list(labels), "image_size": int(store.size),
            "age_mean": age_mean, "age_std": age_std, "feature_dim": model.backbone.out_dim,
            "sex_head": "P(male): gender 'M' = 1, 'F' = 0", "n_train_images": len(train),
            "n_train_patients": int(train["subject_id"].nunique()), "config": cfg.model_dump(mode="json")}

    quality: dict = {"labels": list(labels), "n_cohort_images_without_pixels": n_missing, "splits": {}}
    held_out = cohort[cohort["split"] != "train"].reset_index(drop=True)
    preds = predict(model, meta, store.load(held_out["dicom_id"].tolist()), device) if len(held_out) else None
    for split in ("valid", "test"):
        sel = (held_out["split"] == split).to_numpy()
        if sel.any():
            quality["splits"][split] = _quality({k: v[sel] for k, v in preds.items()}, held_out[sel], labels)
        else:
            quality["splits"][split] = {"n_images": 0, "reason": f"no {split}-split images"}
    if truth is not None and preds is not None:
        quality["truth_recovery"] = _truth_recovery(Path(truth), held_out, preds, labels)
    elif truth is not None:
        quality["truth_recovery"] = {"computed": False, "reason": "no held-out (valid/test) images to score"}

    with atomic_dir(out_dir) as tmp:
        save_evaluator(model.cpu(), meta, tmp)
        with open(tmp / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        (tmp / "loss.png").write_bytes(loss_curve_png(pd.DataFrame(history), "evaluator"))
        (tmp / "quality.json").write_text(json.dumps(to_json(quality), indent=2, allow_nan=False))
    test_q = quality["splits"]["test"]
    return to_json({
        "out_dir": str(out_dir), "n_train_images": len(train), "steps": cfg.train.steps, "seconds": time.time() - t0,
        "final_loss": history[-1]["loss"], "first_loss": history[0]["loss"],
        "test_macro_auroc": test_q.get("auroc", {}).get("macro", {}).get("value"),
        "test_sex_auroc": test_q.get("sex_auroc", {}).get("value"),
    })


# ------------------------------------------------------------------------------------------- evaluate


def _manifest_settings(manifest: pd.DataFrame) -> dict:
    def values(col):
        if col not in manifest:
            return None
        u = sorted(manifest[col].dropna().unique().tolist())
        return u if len(u) <= 10 else {"n_unique": len(u), "min": u[0], "max": u[-1]}

    out = {k: values(k) for k in ("seed", "sampler", "steps", "guidance")}
    out["seeds"] = out.pop("seed")
    if "seconds" in manifest:
        out["seconds_per_image_mean"] = float(manifest["seconds"].mean()) if len(manifest) else None
    return out


def _fid_block(name: str, feats: dict[str, np.ndarray], halves, extractor: str, extra: dict) -> dict:
    res = frechet.cross_half_fd(feats[name], feats["real_target"], halves)
    return {"computed": res.get("value") is not None, "extractor": extractor, **extra, **res}


def evaluate(samples: dict[str, Path], images_h5, triplets, evaluator_dir, cfg: EvaluateConfig, run_info: dict,
             out_json, device="auto", split="test", *, _inception_sha256_prefix: str = inception.FID_WEIGHTS_SHA256_PREFIX) -> dict:
    """Score every method on the same `split` pairs and write `eval/metrics.json` (layout in the module docstring)."""
    t0 = time.time()
    device = resolve_device(device)
    model, meta = load_evaluator(evaluator_dir, device)
    labels = tuple(meta["labels"])
    store = open_images(images_h5)
    if store.size != meta["image_size"]:
        raise InputError(f"{images_h5}: images are {store.size} px but the evaluator in {evaluator_dir} expects {meta['image_size']}")
    trip = read_triplets(triplets, labels)
    trip = trip[trip["split"] == split]
    if trip.empty:
        raise InputError(f"{triplets}: no pairs with split == {split!r}")
    if "previous_image" in samples or "real_target" in samples:
        raise ValueError("samples: the names previous_image and real_target are reserved for the baselines")

    keep = trip["prev_dicom_id"].map(lambda d: d in store) & trip["trg_dicom_id"].map(lambda d: d in store)
    pair_ids = set(trip.loc[keep, "pair_id"])
    coverage, manifests = {"n_split_pairs": len(trip), "n_without_real_pixels": int((~keep).sum())}, {}
    for name, folder in samples.items():
        folder = Path(folder)
        man = read_manifest(folder)
        have = {p for p in man["pair_id"] if (folder / f"{p}.png").exists()}
        coverage[f"n_without_{name}"] = len(pair_ids - have)
        manifests[name] = man
        pair_ids &= have
    if not pair_ids:
        raise InputError(f"no {split} pair of {triplets} has real images and a sample in every samples folder {list(samples)}")
    trip = trip[trip["pair_id"].isin(pair_ids)].sort_values("pair_id").reset_index(drop=True)
    ids = trip["pair_id"].tolist()

    images = {name: read_pngs(samples[name], ids, store.size) for name in samples}
    images["previous_image"] = store.load(trip["prev_dicom_id"].tolist())
    images["real_target"] = store.load(trip["trg_dicom_id"].tolist())
    preds = {name: predict(model, meta, imgs, device) for name, imgs in images.items()}
    halves = frechet.patient_halves(trip["subject_id"].to_numpy(), cfg.seed)

    trg, prev = label_matrix(trip, "trg_", labels), label_matrix(trip, "prev_", labels)
    feats = {"evaluator": {k: p["features"] for k, p in preds.items()}}
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
        "evaluator": (f"self-trained evaluator ({meta['arch']}) penultimate layer; NOT comparable to published FID", {}),
        "inception": ("pytorch-fid InceptionV3 pool3, FID weights 6726825d", {"preprocessing": inception.PREPROCESSING}),
        "xrv": ("torchxrayvision DenseNet121-res224-all avg-pooled features", {}),
    }

    methods = {}
    kinds = {**{n: "generated" for n in samples}, "previous_image": "baseline", "real_target": "ceiling"}
    for name, kind in kinds.items():
        p = preds[name]
        fid = {ext: _fid_block(name, feats[ext], halves, *extractors[ext]) for ext in feats}
        fid.update(fid_status)
        methods[name] = {
            "kind": kind,
            "n_pairs": len(ids),
            "generation": _manifest_settings(manifests[name][manifests[name]["pair_id"].isin(pair_ids)]) if name in samples else None,
            "auroc": metrics.finding_aurocs(p["probs"], trg, prev, labels),
            "sex_auroc": metrics.sex_auroc(p["p_male"], trip["gender"].to_numpy()),
            "age_pearson_r": metrics.pearson(p["age"], trip["age"].to_numpy()),
            "age_mae_years": float(np.nanmean(np.abs(p["age"] - trip["age"].astype("float64").to_numpy()))),
            "fid": fid,
        }

    model_name = "ehrxdiff" if "ehrxdiff" in samples else next(iter(samples), None)
    headline = {"subset": "diff", "statistic": "macro AUROC", "model": model_name}
    for name in ([model_name] if model_name else []) + ["previous_image", "real_target"]:
        headline[name] = methods[name]["auroc"]["diff"]["macro"]["value"]
    if model_name and headline[model_name] is not None and headline["previous_image"] is not None:
        headline["delta_vs_previous_image"] = headline[model_name] - headline["previous_image"]
        headline["model_beats_previous_image"] = headline["delta_vs_previous_image"] > 0
        headline["delta_bootstrap"] = metrics.bootstrap_macro_delta(
            preds[model_name]["probs"], preds["previous_image"]["probs"], trg, prev, trip["subject_id"].to_numpy(),
            "diff", cfg.bootstrap, cfg.seed)
    headline["diff_micro"] = {n: methods[n]["auroc"]["diff"]["micro"]["value"] for n in methods}
    headline["n_diff_labels_defined"] = {n: methods[n]["auroc"]["diff"]["macro"]["n_labels"] for n in methods}
    settings = {
            "split": split, "n_pairs": len(ids), "n_patients": int(trip["subject_id"].nunique()),
            "labels": list(labels), "evaluate": cfg.model_dump(mode="json"), "run_info": run_info,
            "evaluator": {"dir": str(evaluator_dir), "arch": meta["arch"], "image_size": meta["image_size"],
                          "feature_dim": meta["feature_dim"], "n_train_images": meta.get("n_train_images")},
            "fid_protocol": frechet.PROTOCOL, "fid_halves": {"n_a": len(halves[0]), "n_b": len(halves[1]), "seed": cfg.seed},
            "subsets": "per label: all = target label known; diff = target != previous (previous NULL -> 0); same = target == previous",
            "coverage": coverage, "seconds": time.time() - t0,
    }
    for block in methods.values():
        block["settings"] = settings
    if model_name:
        methods[model_name]["vs_previous_image"] = headline
    result = methods
    write_json(result, Path(out_json))
    return to_json(result)
