"""Image controls a model must beat, and a quality gate for the autoencoder they share.

A latent model can score well by copying the previous image through its autoencoder, or by
blurring it. Two controls make those shortcuts explicit, scored by `evaluate` beside the model:

- `previous_vae`: the previous image through the pipeline's autoencoder (encode, posterior mode,
  decode): the floor any latent model starts from.
- `previous_blur`: the previous image blurred by one global Gaussian sigma, fitted so that its mean
  sharpness equals the model's samples' mean sharpness: a blurred copy as sharp as the model.

`vae_quality` asks whether the autoencoder keeps what the evaluator reads: the evaluator on real
validation images and on their reconstructions, with a pass/fail gate (`GATE_*` constants).

Both control folders follow the samples-folder contract (`ehrxdiff_core/artifacts/samples.py`), plus `control.json`.
Heavy or environment-specific imports (diffusers, scipy, scikit-learn) happen inside the functions
that need them, so the blur control runs in the evaluation environment and the autoencoder control
in the models environment. Layout and figures: docs/controls.md.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES, PAIR_IMAGES, TRIPLETS
from ehrxdiff_core.artifacts.samples import sample_path, write_manifest
from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.device import resolve_device
from ehrxdiff_core.evaluation.common import evaluator_and_images, to_json, write_json
from ehrxdiff_core.evaluation.inputs import InputError, open_images, read_manifest, read_pngs, read_table

log = logging.getLogger(__name__)

# autoencoder quality gate on validation images: reconstructions must keep the evaluator's findings
# signal (macro AUROC within this of the real images') and its age signal (Pearson r at least this)
GATE_MAX_MACRO_AUROC_GAP = 0.03
GATE_MIN_AGE_PEARSON_R = 0.9
QUALITY_SPLIT = "valid"

# blur fit: Gaussian sigma searched in [0, size * BLUR_SIGMA_MAX_FRACTION] pixels by bisection to this tolerance
BLUR_SIGMA_MAX_FRACTION = 0.25
BLUR_SIGMA_TOL = 1e-3
BLUR_TRUNCATE = 4.0
SHARPNESS_STATISTIC = (
    "gradient energy: mean over pixels of squared forward differences along x plus along y, "
    "on pixels / 255; one value per image, averaged over images"
)

VAE_BATCH = 32


def _summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def _split_pairs(triplets, split: str, store, images_h5) -> pd.DataFrame:
    """The pairs of `split` whose previous image has pixels, sorted by pair_id (the control's rows)."""
    trip = read_table(triplets, [*PAIR_IMAGES, *TRIPLETS.columns("split")], "triplets table")
    trip = trip[trip["split"] == split]
    dup = trip["pair_id"][trip["pair_id"].duplicated()]
    if len(dup):
        raise InputError(f"{triplets}: pair_id {dup.iloc[0]!r} appears more than once")
    trip = trip[trip["prev_dicom_id"].map(lambda d: d in store)]
    if trip.empty:
        raise InputError(f"{triplets}: no pair with split == {split!r} has its previous image in {images_h5}")
    return trip[PAIR_IMAGES].sort_values("pair_id").reset_index(drop=True)


# ------------------------------------------------------------------------------------ folder contract


def write_control_folder(
    out_dir, pair_ids, images: np.ndarray, sampler: str, seconds_per_image: float, control: dict | None = None
) -> None:
    """Write a samples folder (`{pair_id}.png`, `manifest.parquet`, optional `control.json`) atomically."""
    images = np.asarray(images)
    pair_ids = [str(p) for p in pair_ids]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 (N, S, S), got {images.dtype} {images.shape}")
    if len(pair_ids) != len(images):
        raise ValueError(f"{len(pair_ids)} pair ids for {len(images)} images")
    rows = [
        {
            "pair_id": p,
            "seed_index": 0,
            "seed": 0,
            "path": sample_path(p, 0),
            "sampler": sampler,
            "steps": 0,
            "guidance": float("nan"),
            "seconds": float(seconds_per_image),
        }
        for p in pair_ids
    ]
    with atomic_dir(out_dir) as tmp:
        for pid, img in zip(pair_ids, images):
            Image.fromarray(img, mode="L").save(tmp / sample_path(pid, 0))
        write_manifest(tmp, rows)
        if control is not None:
            write_json(control, tmp / "control.json")


# ---------------------------------------------------------------------------------------- previous_vae


@torch.no_grad()
def previous_vae_images(vae, images: np.ndarray, device: str = "cpu", batch_size: int = VAE_BATCH) -> np.ndarray:
    """uint8 (N, S, S) through the autoencoder: encode, posterior mode, decode, clamp to [-1, 1], round."""
    from ehrxdiff_core.models.datasets import from_unit_range
    from ehrxdiff_core.models.vae import decode_gray, encode_gray

    device = resolve_device(device)
    vae = vae.to(device).eval()
    out = np.empty_like(images, dtype=np.uint8)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        x = x.float().div(127.5).sub(1.0)[:, None]
        y = decode_gray(vae, encode_gray(vae, x).mode()).clamp(-1, 1)
        if y.shape[-2:] != x.shape[-2:]:
            raise InputError(
                f"autoencoder returns {tuple(y.shape[-2:])} px for {tuple(x.shape[-2:])} px input: "
                "images.size must be a multiple of its downsampling factor"
            )
        out[start : start + len(x)] = from_unit_range(y)
    return out


def control_previous_vae(images_h5, triplets, vae_dir, split: str, out_dir, device: str = "auto") -> dict:
    """Write `samples/previous_vae/{split}`: each pair's previous image through the autoencoder."""
    from ehrxdiff_core.models.vae import load_vae

    t0 = time.time()
    vae = load_vae(vae_dir)
    store = open_images(images_h5)
    pairs = _split_pairs(triplets, split, store, images_h5)
    prev = store.load(pairs["prev_dicom_id"].tolist())
    t1 = time.time()
    recon = previous_vae_images(vae, prev, device)
    per_image = (time.time() - t1) / len(pairs)
    err = np.abs(recon.astype(np.float64) - prev)
    control = {
        "control": "previous_vae",
        "split": split,
        "n_pairs": len(pairs),
        "vae_dir": str(vae_dir),
        "latent": "posterior mode (no sampling)",
        "vs_previous": {"mae": float(err.mean()), "psnr_db": _psnr(err)},
    }
    write_control_folder(out_dir, pairs["pair_id"], recon, "previous_vae", per_image, control)
    log.info(
        "previous_vae: %d %s pairs, MAE %.2f, PSNR %.2f dB -> %s",
        len(pairs),
        split,
        control["vs_previous"]["mae"],
        control["vs_previous"]["psnr_db"],
        out_dir,
    )
    return {**control, "seconds": time.time() - t0}


def _psnr(abs_err: np.ndarray) -> float | None:
    mse = float(np.mean(abs_err**2)) if abs_err.size else float("nan")
    return None if not math.isfinite(mse) else (float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse))


# --------------------------------------------------------------------------------------- previous_blur


def sharpness(images: np.ndarray) -> np.ndarray:
    """Gradient energy per image: mean squared forward difference along x plus along y, pixels / 255.

    Chosen because it has no parameter and falls monotonically as a Gaussian blur widens (in Fourier
    terms it is spectral power weighted by the difference filter's gain, and a wider Gaussian lowers
    every frequency's power), so one sigma matching a target value exists and bisection finds it.
    """
    x = np.asarray(images, dtype=np.float64) / 255.0
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (H, W), got shape {x.shape}")
    gx = np.diff(x, axis=2)
    gy = np.diff(x, axis=1)
    return (gx**2).mean(axis=(1, 2)) + (gy**2).mean(axis=(1, 2))


def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 images blurred by an isotropic Gaussian of `sigma` pixels (reflecting edges), rounded back to uint8."""
    if sigma <= 0:
        return np.asarray(images, dtype=np.uint8).copy()
    from scipy.ndimage import gaussian_filter

    x = np.asarray(images, dtype=np.float64)
    y = gaussian_filter(x, sigma=(0, sigma, sigma), mode="reflect", truncate=BLUR_TRUNCATE)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


@dataclass
class BlurFit:
    sigma: float
    status: str  # "fit", "no_blur" (samples as sharp as the previous images) or "at_max" (sigma_max not blurry enough)
    target: float  # mean sharpness of the samples
    previous: float  # mean sharpness of the previous images, unblurred
    blurred: float  # mean sharpness of the previous images blurred by sigma
    sigma_max: float
    tolerance: float
    iterations: int


def fit_blur_sigma(
    previous: np.ndarray, samples: np.ndarray, sigma_max: float | None = None, tol: float = BLUR_SIGMA_TOL
) -> BlurFit:
    """The one Gaussian sigma at which the blurred previous images' mean sharpness equals the samples'.

    Sharpness is measured on the rounded uint8 images, as they are written. Sigma is 0 when the samples
    are as sharp as or sharper than the previous images.
    """
    previous = np.asarray(previous)
    if len(previous) == 0 or len(samples) == 0:
        raise ValueError("fit_blur_sigma: no images to fit on")
    sigma_max = float(sigma_max if sigma_max is not None else BLUR_SIGMA_MAX_FRACTION * previous.shape[-1])
    target = float(sharpness(samples).mean())
    prev_sharp = float(sharpness(previous).mean())

    def mean_sharpness(sigma: float) -> float:
        return float(sharpness(blur_images(previous, sigma)).mean())

    if target >= prev_sharp:
        return BlurFit(0.0, "no_blur", target, prev_sharp, prev_sharp, sigma_max, tol, 0)
    at_max = mean_sharpness(sigma_max)
    if at_max > target:
        return BlurFit(sigma_max, "at_max", target, prev_sharp, at_max, sigma_max, tol, 1)
    lo, hi, it = 0.0, sigma_max, 1
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        it += 1
        if mean_sharpness(mid) > target:
            lo = mid
        else:
            hi = mid
    sigma = 0.5 * (lo + hi)
    return BlurFit(sigma, "fit", target, prev_sharp, mean_sharpness(sigma), sigma_max, tol, it)


def _seed0_samples(samples_dir: Path) -> list[str]:
    """Pair ids of the first seed in a samples folder (`{pair_id}.png`; more seeds live in `seed{k}/`)."""
    man = read_manifest(samples_dir)
    if "seed_index" in man:
        man = man[man["seed_index"] == 0]
    return sorted(p for p in man["pair_id"].astype(str).unique() if (samples_dir / f"{p}.png").exists())


def control_previous_blur(images_h5, triplets, samples_dir, split: str, out_dir) -> dict:
    """Write `samples/previous_blur/{split}`: previous images blurred to the model's sharpness (`control.json`)."""
    t0 = time.time()
    samples_dir = Path(samples_dir)
    store = open_images(images_h5)
    pairs = _split_pairs(triplets, split, store, images_h5)
    have = set(_seed0_samples(samples_dir))
    fit_pairs = pairs[pairs["pair_id"].isin(have)]
    if fit_pairs.empty:
        raise InputError(
            f"{samples_dir}: no sample for any {split} pair of {triplets} with a previous image in {images_h5}"
        )
    samples = read_pngs(samples_dir, fit_pairs["pair_id"].tolist(), store.size)
    fit_prev = store.load(fit_pairs["prev_dicom_id"].tolist())
    fit = fit_blur_sigma(fit_prev, samples)
    with_trg = fit_pairs[fit_pairs["trg_dicom_id"].map(lambda d: d in store)]
    targets = store.load(with_trg["trg_dicom_id"].tolist())

    prev = store.load(pairs["prev_dicom_id"].tolist())
    t1 = time.time()
    blurred = blur_images(prev, fit.sigma)
    per_image = (time.time() - t1) / len(pairs)
    fit_rows = pairs["pair_id"].isin(have).to_numpy()

    def group(images):
        std = np.asarray(images, np.float64).std(axis=(1, 2))
        return {**_summary(sharpness(images)), "pixel_std_mean": _summary(std)["mean"]}

    reasons = {
        "fit": "bisection: blurred previous images as sharp as the samples",
        "no_blur": "the samples are as sharp as or sharper than the previous images: no blur (sigma = 0)",
        "at_max": "the samples are blurrier than the previous images blurred at sigma_max: sigma clamped there",
    }
    control = {
        "control": "previous_blur",
        "split": split,
        "samples_dir": str(samples_dir),
        "sigma": fit.sigma,
        "sigma_status": fit.status,
        "sigma_reason": reasons[fit.status],
        "fit": {
            "sigma_max": fit.sigma_max,
            "tolerance": fit.tolerance,
            "iterations": fit.iterations,
            "target_mean_sharpness": fit.target,
            "blurred_mean_sharpness": fit.blurred,
        },
        "blur": {
            "function": "scipy.ndimage.gaussian_filter",
            "mode": "reflect",
            "truncate": BLUR_TRUNCATE,
            "rounded_to_uint8": True,
        },
        "sharpness_statistic": SHARPNESS_STATISTIC,
        "sharpness": {
            "samples": group(samples),
            "real_target": group(targets),
            "previous": group(fit_prev),
            "previous_blurred": group(blurred[fit_rows]),
        },
        "sharpness_pairs": "samples, previous and previous_blurred: the pairs with a seed-0 sample; "
        "real_target: those of them whose target has pixels",
        "n_pairs": len(pairs),
        "n_fit_pairs": len(fit_pairs),
        "n_pairs_without_sample": int(len(pairs) - len(fit_pairs)),
    }
    write_control_folder(out_dir, pairs["pair_id"], blurred, "previous_blur", per_image, control)
    s = control["sharpness"]
    log.info(
        "previous_blur: sigma %.3f px (%s); sharpness samples %.3g, real targets %.3g, previous %.3g, "
        "blurred previous %.3g; %d pairs (%d fitted) -> %s",
        fit.sigma,
        fit.status,
        s["samples"]["mean"],
        s["real_target"]["mean"] or float("nan"),
        s["previous"]["mean"],
        s["previous_blurred"]["mean"],
        len(pairs),
        len(fit_pairs),
        out_dir,
    )
    return {
        "sigma": fit.sigma,
        "status": fit.status,
        "n_pairs": len(pairs),
        "n_fit_pairs": len(fit_pairs),
        "sharpness": {k: v["mean"] for k, v in s.items()},
        "seconds": time.time() - t0,
    }


# ----------------------------------------------------------------------------------------- vae_quality


def _scores(preds: dict, df: pd.DataFrame, labels: tuple[str, ...]) -> dict:
    from ehrxdiff_core.evaluation import metrics
    from ehrxdiff_core.evaluation.inputs import label_matrix

    y = label_matrix(df, "", labels)
    return {
        "auroc": metrics.finding_aurocs(preds["probs"], y, y, labels)["all"],
        "sex_auroc": metrics.sex_auroc(preds["p_male"], df["gender"].to_numpy()),
        "age_pearson_r": metrics.pearson(preds["age"], df["age"].astype("float64").to_numpy()),
    }


def _diff(a, b):
    return None if a is None or b is None else b - a


def quality_gate(real: dict, recon: dict) -> dict:
    """Pass when reconstructions keep macro findings AUROC within the gap of real images and age r above the floor."""
    real_macro, recon_macro = real["auroc"]["macro"]["value"], recon["auroc"]["macro"]["value"]
    age_r = recon["age_pearson_r"]["value"]
    gap = None if real_macro is None or recon_macro is None else abs(recon_macro - real_macro)
    checks = {
        "macro_auroc_gap": {
            "value": gap,
            "max": GATE_MAX_MACRO_AUROC_GAP,
            "passed": gap is not None and gap <= GATE_MAX_MACRO_AUROC_GAP,
        },
        "reconstructed_age_pearson_r": {
            "value": age_r,
            "min": GATE_MIN_AGE_PEARSON_R,
            "passed": age_r is not None and age_r >= GATE_MIN_AGE_PEARSON_R,
        },
    }
    reasons = []
    if gap is None:
        reasons.append("macro findings AUROC undefined on real or reconstructed images: gate cannot pass")
    elif gap > GATE_MAX_MACRO_AUROC_GAP:
        reasons.append(f"|macro AUROC reconstructed - real| = {gap:.4f} > {GATE_MAX_MACRO_AUROC_GAP}")
    if age_r is None:
        reasons.append("age Pearson r undefined on reconstructions: gate cannot pass")
    elif age_r < GATE_MIN_AGE_PEARSON_R:
        reasons.append(f"age Pearson r on reconstructions = {age_r:.4f} < {GATE_MIN_AGE_PEARSON_R}")
    return {
        "passed": all(c["passed"] for c in checks.values()),
        "thresholds": {"max_macro_auroc_gap": GATE_MAX_MACRO_AUROC_GAP, "min_age_pearson_r": GATE_MIN_AGE_PEARSON_R},
        "checks": checks,
        "reasons": reasons,
        "rule": "passes when |macro findings AUROC (reconstructed) - (real)| <= max_macro_auroc_gap "
        "and age Pearson r on reconstructions >= min_age_pearson_r",
    }


def vae_quality(images_h5, cohort_images, vae_dir, evaluator_dir, out_json, device: str = "auto") -> dict:
    """Write `eval/vae_quality.json`: the evaluator on real validation images vs their autoencoder reconstructions."""
    from ehrxdiff_core.evaluation.evaluator import predict
    from ehrxdiff_core.models.vae import load_vae

    t0 = time.time()
    device = resolve_device(device)
    vae = load_vae(vae_dir)
    model, meta, labels, store = evaluator_and_images(evaluator_dir, images_h5, device)
    cohort = read_table(
        cohort_images, COHORT_IMAGES.columns("dicom_id", "split", "age", "gender", *labels), "cohort images table"
    )
    cohort = cohort[cohort["split"] == QUALITY_SPLIT]
    in_store = cohort["dicom_id"].map(lambda d: d in store)
    df = cohort[in_store].drop_duplicates("dicom_id").sort_values("dicom_id").reset_index(drop=True)
    if df.empty:
        raise InputError(f"{cohort_images}: no {QUALITY_SPLIT}-split image has pixels in {images_h5}")

    real_px = store.load(df["dicom_id"].tolist())
    recon_px = previous_vae_images(vae, real_px, device)
    real = _scores(predict(model, meta, real_px, device), df, labels)
    recon = _scores(predict(model, meta, recon_px, device), df, labels)
    err = np.abs(recon_px.astype(np.float64) - real_px)
    result = {
        "split": QUALITY_SPLIT,
        "n_images": len(df),
        "n_without_pixels": int((~in_store).sum()),
        "labels": list(labels),
        "images_h5": str(images_h5),
        "vae_dir": str(vae_dir),
        "evaluator_dir": str(evaluator_dir),
        "real": real,
        "reconstructed": recon,
        "difference": {
            "sign": "reconstructed - real",
            "macro_auroc": _diff(real["auroc"]["macro"]["value"], recon["auroc"]["macro"]["value"]),
            "micro_auroc": _diff(real["auroc"]["micro"]["value"], recon["auroc"]["micro"]["value"]),
            "per_label_auroc": {
                l: _diff(real["auroc"]["per_label"][l]["value"], recon["auroc"]["per_label"][l]["value"])
                for l in labels
            },
            "sex_auroc": _diff(real["sex_auroc"]["value"], recon["sex_auroc"]["value"]),
            "age_pearson_r": _diff(real["age_pearson_r"]["value"], recon["age_pearson_r"]["value"]),
        },
        "pixels": {"mae": float(err.mean()), "psnr_db": _psnr(err), "scale": "uint8 0-255"},
        "gate": quality_gate(real, recon),
        "seconds": time.time() - t0,
    }
    write_json(result, Path(out_json))
    d, g = result["difference"], result["gate"]
    log.info(
        "vae_quality on %d %s images: macro AUROC real %s, reconstructed %s (diff %s); sex AUROC real %s, "
        "reconstructed %s; age r real %s, reconstructed %s; pixel MAE %.2f, PSNR %.2f dB",
        len(df),
        QUALITY_SPLIT,
        real["auroc"]["macro"]["value"],
        recon["auroc"]["macro"]["value"],
        d["macro_auroc"],
        real["sex_auroc"]["value"],
        recon["sex_auroc"]["value"],
        real["age_pearson_r"]["value"],
        recon["age_pearson_r"]["value"],
        result["pixels"]["mae"],
        result["pixels"]["psnr_db"] or float("inf"),
    )
    log.info("vae_quality gate: %s %s", "PASSED" if g["passed"] else "FAILED", "; ".join(g["reasons"]))
    return to_json(result)
