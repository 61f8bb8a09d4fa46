"""The `train_evaluator` stage: the evaluator trained on real train-split images -> `eval/evaluator/`
(weights, loss curve, and its own scores on the held-out real images: the ceiling for generated ones)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.config import EvaluatorConfig
from ehrxdiff_core.device import resolve_device
from ehrxdiff_core.evaluation import metrics
from ehrxdiff_core.evaluation.common import to_json
from ehrxdiff_core.evaluation.evaluator import EvaluatorNet, predict, save_evaluator
from ehrxdiff_core.evaluation.evaluator_training import train_loop
from ehrxdiff_core.evaluation.inputs import (
    InputError,
    label_matrix,
    open_images,
    read_cohort_images,
    read_table,
    truth_severity_columns,
)
from ehrxdiff_core.evaluation.plots import loss_curve_png
from ehrxdiff_core.labels import EVAL_LABELS

PRELOAD_BYTES = 2 << 30  # train images up to 2 GiB are held in memory; larger sets are read per batch


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
        "age_mae_years": float(np.nanmean(np.abs(probs_out["age"] - age))) if np.isfinite(age).any() else None,
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
    history = train_loop(
        model,
        _batch_loader(store, train["dicom_id"].tolist()),
        _targets(train, labels, age_mean, age_std),
        cfg.train,
        device,
        use_augment=cfg.augment,
    )
    meta = {
        "arch": cfg.arch,
        "width": cfg.width,
        "labels": list(labels),
        "image_size": int(store.size),
        "age_mean": age_mean,
        "age_std": age_std,
        "feature_dim": model.backbone.out_dim,
        "sex_head": "P(male): gender 'M' = 1, 'F' = 0",
        "n_train_images": len(train),
        "n_train_patients": int(train["subject_id"].nunique()),
        "config": cfg.model_dump(mode="json"),
    }

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
    return to_json(
        {
            "out_dir": str(out_dir),
            "n_train_images": len(train),
            "steps": cfg.train.steps,
            "seconds": time.time() - t0,
            "final_loss": history[-1]["loss"],
            "first_loss": history[0]["loss"],
            "test_macro_auroc": test_q.get("auroc", {}).get("macro", {}).get("value"),
            "test_sex_auroc": test_q.get("sex_auroc", {}).get("value"),
        }
    )
