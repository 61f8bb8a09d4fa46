"""Image controls (previous image through the autoencoder, previous image blurred to the model's
sharpness) and the autoencoder quality gate: known answers, the samples-folder contract, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ehrxdiff_core.artifacts.samples import MANIFEST
from ehrxdiff_core.config import VaeConfig
from ehrxdiff_core.evaluation import metrics
from ehrxdiff_core.evaluation.controls import (
    GATE_MAX_MACRO_AUROC_GAP,
    GATE_MIN_AGE_PEARSON_R,
    blur_images,
    control_previous_blur,
    control_previous_vae,
    fit_blur_sigma,
    previous_vae_images,
    quality_gate,
    sharpness,
    vae_quality,
)
from ehrxdiff_core.evaluation.evaluator import EvaluatorNet, predict, save_evaluator
from ehrxdiff_core.evaluation.inputs import InputError, label_matrix, read_manifest
from ehrxdiff_core.labels import EVAL_LABELS
from ehrxdiff_core.models.vae import build_vae, load_vae
from test_eval_stages import SIZE, build_world

torch.set_num_threads(1)


def sharp_images(n: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    """Hard-edged rectangles on a fine checkerboard: lots of high-frequency energy for a blur to remove."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        img = 60.0 + 40.0 * ((yy // 2 + xx // 2) % 2)
        for _ in range(6):
            y0, x0 = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, size // 2, 2)
            img[y0 : y0 + h, x0 : x0 + w] += rng.uniform(-50, 120)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    w = build_world(root, n_subjects=40)
    torch.manual_seed(0)
    build_vae(VaeConfig(block_out_channels=[8, 8], layers_per_block=1), SIZE).save_pretrained(root / "models/vae")
    torch.manual_seed(0)
    net = EvaluatorNet("small_cnn", len(EVAL_LABELS), width=8)
    (root / "eval/evaluator").mkdir(parents=True)
    meta = {
        "arch": "small_cnn",
        "width": 8,
        "labels": list(EVAL_LABELS),
        "image_size": SIZE,
        "age_mean": 55.0,
        "age_std": 20.0,
        "feature_dim": net.backbone.out_dim,
    }
    save_evaluator(net, meta, root / "eval/evaluator")
    w.update(root=root, vae=root / "models/vae", evaluator=root / "eval/evaluator", net=net, meta=meta)
    return w


def _test_pairs(world) -> pd.DataFrame:
    trip = pd.read_parquet(world["triplets"])
    return trip[trip["split"] == "test"].sort_values("pair_id").reset_index(drop=True)


def _store_pixels(world, dicom_ids) -> np.ndarray:
    from ehrxdiff_core.evaluation.inputs import open_images

    return open_images(world["h5"]).load(list(dicom_ids))


def _check_folder(folder: Path, pair_ids: list[str], sampler: str) -> dict[str, np.ndarray]:
    man = pd.read_parquet(folder / "manifest.parquet")
    MANIFEST.check_file(folder / "manifest.parquet")  # the samples-folder contract
    assert man["pair_id"].tolist() == pair_ids
    assert (man["seed_index"] == 0).all() and (man["seed"] == 0).all() and (man["steps"] == 0).all()
    assert man["guidance"].isna().all() and (man["sampler"] == sampler).all() and (man["seconds"] >= 0).all()
    assert man["path"].tolist() == [f"{p}.png" for p in pair_ids]
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == sorted(f"{p}.png" for p in pair_ids)
    read_manifest(folder)  # what `evaluate` requires of a samples folder
    out = {}
    for p in pair_ids:
        with Image.open(folder / f"{p}.png") as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            out[p] = np.asarray(im)
    return out


# ------------------------------------------------------------------------------------------ sharpness


def test_sharpness_falls_monotonically_with_sigma():
    imgs = sharp_images(3)
    values = np.stack([sharpness(blur_images(imgs, s)) for s in (0.0, 0.3, 0.6, 1.0, 1.5, 2.5, 4.0, 8.0)])
    assert (np.diff(values, axis=0) < 0).all()  # every image, every step
    assert values[-1].max() < 0.1 * values[0].min()


def test_sharpness_is_the_documented_gradient_energy():
    img = np.zeros((1, 4, 5), np.uint8)
    img[0, :, 2:] = 255  # one vertical step edge: 4 of the 4x4 x-differences are 1, no y-difference
    assert sharpness(img)[0] == pytest.approx(4 / 16)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0])
def test_fit_recovers_a_known_sigma(sigma):
    prev = sharp_images(4, seed=1)
    fit = fit_blur_sigma(prev, blur_images(prev, sigma))
    assert fit.status == "fit"
    assert fit.sigma == pytest.approx(sigma, rel=0.10)
    assert fit.blurred == pytest.approx(fit.target, rel=0.02)
    assert fit.previous > fit.target


def test_sigma_is_zero_when_samples_are_as_sharp_as_previous():
    prev = sharp_images(4, seed=2)
    fit = fit_blur_sigma(prev, prev)
    assert (fit.sigma, fit.status, fit.iterations) == (0.0, "no_blur", 0)
    sharper = fit_blur_sigma(blur_images(prev, 2.0), prev)  # samples sharper than the previous images
    assert sharper.sigma == 0.0 and sharper.status == "no_blur"


def test_sigma_is_clamped_when_samples_are_flat():
    prev = sharp_images(2, size=32, seed=3)
    flat = np.full_like(prev, 128)
    fit = fit_blur_sigma(prev, flat, sigma_max=1.0)
    assert fit.status == "at_max" and fit.sigma == 1.0 and fit.blurred > fit.target


# -------------------------------------------------------------------------------------- previous_vae


def test_previous_vae_writes_the_samples_folder_contract_and_is_deterministic(world, tmp_path):
    pairs = _test_pairs(world)
    info = control_previous_vae(world["h5"], world["triplets"], world["vae"], "test", tmp_path / "a", device="cpu")
    got = _check_folder(tmp_path / "a", pairs["pair_id"].tolist(), "previous_vae")
    assert info["n_pairs"] == len(pairs) == 36
    control_previous_vae(world["h5"], world["triplets"], world["vae"], "test", tmp_path / "b", device="cpu")
    again = _check_folder(tmp_path / "b", pairs["pair_id"].tolist(), "previous_vae")
    assert all(np.array_equal(got[p], again[p]) for p in got)
    # the images are the previous images through the autoencoder; batching changes at most a rounding step
    prev = _store_pixels(world, pairs["prev_dicom_id"])
    written = np.stack([got[p] for p in pairs["pair_id"]])
    vae = load_vae(world["vae"])
    assert np.array_equal(written, previous_vae_images(vae, prev, "cpu"))
    one_by_one = previous_vae_images(vae, prev, "cpu", batch_size=1)
    assert np.abs(written.astype(int) - one_by_one).max() <= 1
    assert np.abs(written.astype(float) - prev).mean() > 5  # a random autoencoder does change the image
    control = json.loads((tmp_path / "a/control.json").read_text())
    assert control["control"] == "previous_vae" and control["n_pairs"] == 36
    assert control["vs_previous"]["mae"] == pytest.approx(np.abs(written.astype(float) - prev).mean())


def test_missing_vae_folder_is_a_clear_error_and_leaves_nothing(world, tmp_path):
    out = tmp_path / "samples/previous_vae/test"
    with pytest.raises(FileNotFoundError, match="no_such_vae"):
        control_previous_vae(world["h5"], world["triplets"], tmp_path / "no_such_vae", "test", out, device="cpu")
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="no_such_vae"):
        vae_quality(
            world["h5"], world["images"], tmp_path / "no_such_vae", world["evaluator"], tmp_path / "q.json", "cpu"
        )
    assert not (tmp_path / "q.json").exists()
    assert list(tmp_path.rglob("*")) == []  # not even a temporary folder or its parent


def test_split_without_pairs_names_the_triplets_file(world, tmp_path):
    with pytest.raises(InputError, match=r"triplets\.parquet.*'nosuch'"):
        control_previous_vae(world["h5"], world["triplets"], world["vae"], "nosuch", tmp_path / "o", device="cpu")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- previous_blur


def _blurred_samples(world, folder: Path, sigma: float, drop: int, seed_index: bool = True) -> list[str]:
    """A model samples folder whose images are the previous images blurred by `sigma`; the first `drop` pairs lack one.

    `seed_index=False` writes a manifest without that column, as the `sample` stage wrote before several seeds."""
    pairs = _test_pairs(world).iloc[drop:]
    folder.mkdir(parents=True)
    imgs = blur_images(_store_pixels(world, pairs["prev_dicom_id"]), sigma)
    for pid, img in zip(pairs["pair_id"], imgs):
        Image.fromarray(img, mode="L").save(folder / f"{pid}.png")
    (folder / "seed1").mkdir()  # another seed's images are ignored by the fit
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), mode="L").save(
        folder / "seed1" / f"{pairs['pair_id'].iloc[0]}.png"
    )
    man = pd.DataFrame(
        {
            "pair_id": pairs["pair_id"],
            "seed_index": 0,
            "seed": 7,
            "sampler": "ddim",
            "steps": 10,
            "guidance": 1.0,
            "seconds": 0.1,
        }
    )
    man.drop(columns=[] if seed_index else ["seed_index"]).to_parquet(folder / "manifest.parquet")
    return pairs["pair_id"].tolist()


def test_previous_blur_fits_the_samples_sharpness(world, tmp_path):
    fitted = _blurred_samples(world, tmp_path / "samples/test", 1.2, drop=5)
    out = tmp_path / "samples/previous_blur/test"
    info = control_previous_blur(world["h5"], world["triplets"], tmp_path / "samples/test", "test", out)
    pairs = _test_pairs(world)
    got = _check_folder(out, pairs["pair_id"].tolist(), "previous_blur")  # every pair, not only the fitted ones
    control = json.loads((out / "control.json").read_text())
    assert control["sigma"] == pytest.approx(1.2, rel=0.10) and control["sigma_status"] == "fit"
    assert info["sigma"] == control["sigma"]
    assert (control["n_pairs"], control["n_fit_pairs"], control["n_pairs_without_sample"]) == (36, 31, 5)
    s = control["sharpness"]
    assert set(s) == {"samples", "real_target", "previous", "previous_blurred"}
    assert s["samples"]["n"] == s["previous"]["n"] == s["previous_blurred"]["n"] == len(fitted)
    assert s["previous_blurred"]["mean"] == pytest.approx(s["samples"]["mean"], rel=0.02)
    assert s["previous"]["mean"] > s["samples"]["mean"]
    prev = _store_pixels(world, pairs["prev_dicom_id"])
    assert np.array_equal(np.stack([got[p] for p in pairs["pair_id"]]), blur_images(prev, control["sigma"]))
    assert s["previous"]["mean"] == pytest.approx(sharpness(prev[5:]).mean())
    trg = _store_pixels(world, pairs["trg_dicom_id"].iloc[5:])
    assert s["real_target"]["mean"] == pytest.approx(sharpness(trg).mean())


def test_previous_blur_is_unblurred_when_samples_are_the_previous_images(world, tmp_path):
    _blurred_samples(world, tmp_path / "s", 0.0, drop=0, seed_index=False)
    control_previous_blur(world["h5"], world["triplets"], tmp_path / "s", "test", tmp_path / "o")
    control = json.loads((tmp_path / "o/control.json").read_text())
    assert control["sigma"] == 0.0 and control["sigma_status"] == "no_blur"
    pairs = _test_pairs(world)
    got = _check_folder(tmp_path / "o", pairs["pair_id"].tolist(), "previous_blur")
    assert np.array_equal(got[pairs["pair_id"][0]], _store_pixels(world, pairs["prev_dicom_id"][:1])[0])


def test_previous_blur_without_manifest_names_it(world, tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(InputError, match=r"manifest\.parquet"):
        control_previous_blur(world["h5"], world["triplets"], tmp_path / "s", "test", tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------- vae_quality


def test_vae_quality_reports_real_and_reconstructed_with_a_consistent_gate(world, tmp_path):
    out = tmp_path / "eval/vae_quality.json"
    vae_quality(world["h5"], world["images"], world["vae"], world["evaluator"], out, device="cpu")
    q = json.loads(out.read_text())
    assert set(q) >= {"split", "n_images", "labels", "real", "reconstructed", "difference", "pixels", "gate"}
    assert q["split"] == "valid"
    valid = world["df"][world["df"]["split"] == "valid"].sort_values("dicom_id").reset_index(drop=True)
    assert q["n_images"] == len(valid) == 12
    for side in ("real", "reconstructed"):
        assert set(q[side]) == {"auroc", "sex_auroc", "age_pearson_r"}
        assert set(q[side]["auroc"]["per_label"]) == set(EVAL_LABELS)
    # the real-image figures are the evaluator's own, recomputed here
    real_px = _store_pixels(world, valid["dicom_id"])
    preds = predict(world["net"], world["meta"], real_px)
    y = label_matrix(valid, "", EVAL_LABELS)
    macro = metrics.finding_aurocs(preds["probs"], y, y, EVAL_LABELS)["all"]["macro"]["value"]
    assert q["real"]["auroc"]["macro"]["value"] == pytest.approx(macro)
    assert q["real"]["age_pearson_r"]["value"] == pytest.approx(metrics.pearson(preds["age"], valid["age"])["value"])
    recon_px = previous_vae_images(load_vae(world["vae"]), real_px, "cpu")
    assert q["pixels"]["mae"] == pytest.approx(np.abs(recon_px.astype(float) - real_px).mean())
    # differences and the verdict follow from the numbers in the same file
    r_macro, c_macro = q["real"]["auroc"]["macro"]["value"], q["reconstructed"]["auroc"]["macro"]["value"]
    assert q["difference"]["macro_auroc"] == pytest.approx(c_macro - r_macro)
    gate = q["gate"]
    assert gate["thresholds"] == {
        "max_macro_auroc_gap": GATE_MAX_MACRO_AUROC_GAP,
        "min_age_pearson_r": GATE_MIN_AGE_PEARSON_R,
    }
    age_r = q["reconstructed"]["age_pearson_r"]["value"]
    expect = abs(c_macro - r_macro) <= 0.03 and age_r is not None and age_r >= 0.9
    assert gate["passed"] is expect
    assert gate["checks"]["macro_auroc_gap"]["value"] == pytest.approx(abs(c_macro - r_macro))
    assert bool(gate["reasons"]) is (not expect)


def _scores(macro, age_r):
    return {"auroc": {"macro": {"value": macro}}, "age_pearson_r": {"value": age_r}}


@pytest.mark.parametrize(
    "real,recon,passed",
    [
        (_scores(0.80, 0.95), _scores(0.78, 0.93), True),
        (_scores(0.80, 0.95), _scores(0.76, 0.93), False),  # findings AUROC lost beyond the gap
        (_scores(0.80, 0.95), _scores(0.84, 0.93), False),  # "within" is a two-sided gap
        (_scores(0.80, 0.95), _scores(0.80, 0.89), False),  # age signal below the floor
        (_scores(None, 0.95), _scores(0.80, 0.95), False),  # undefined figures never pass
        (_scores(0.80, 0.95), _scores(0.80, None), False),
    ],
)
def test_quality_gate_thresholds(real, recon, passed):
    gate = quality_gate(real, recon)
    assert gate["passed"] is passed
    assert len(gate["reasons"]) == (0 if passed else 1)
