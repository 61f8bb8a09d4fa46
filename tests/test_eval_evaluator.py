"""The evaluator network learns on a tiny separable image set; masking, save/load and input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import EvaluatorConfig, TrainLoop
from ehrxdiff_core.evaluation.evaluator import EvaluatorNet, load_evaluator, predict, save_evaluator
from ehrxdiff_core.evaluation.evaluator_training import augment, masked_losses, train_loop
from ehrxdiff_core.evaluation.inputs import InputError
from ehrxdiff_core.evaluation.metrics import auroc
from ehrxdiff_core.evaluation.train_evaluator import train_evaluator
from ehrxdiff_core.labels import EVAL_LABELS
from test_eval_stages import LEARNABLE, build_world, render

torch.set_num_threads(1)


def toy_set(n: int, seed: int):
    """Images with two drawn findings, sex and age; the other labels are blank (masked)."""
    rng = np.random.default_rng(seed)
    findings = np.full((n, len(EVAL_LABELS)), np.nan)
    male, age, imgs = rng.random(n) < 0.5, rng.uniform(20, 90, n), []
    for i in range(n):
        lab = {l: float(rng.random() < 0.5) for l in LEARNABLE}
        for l in LEARNABLE:
            findings[i, EVAL_LABELS.index(l)] = lab[l]
        imgs.append(render(lab, bool(male[i]), age[i], rng))
    return np.stack(imgs), findings, male.astype(float), age


def test_small_cnn_learns_a_separable_toy():
    imgs, findings, male, age = toy_set(192, seed=0)
    model = EvaluatorNet("small_cnn", len(EVAL_LABELS), width=8)
    cfg = TrainLoop(steps=150, batch_size=32, lr=3e-3, log_every=10, seed=0)
    hist = train_loop(
        model, lambda idx: imgs[idx], {"findings": findings, "male": male, "age_z": (age - 55) / 20}, cfg, "cpu"
    )
    assert len(hist) == 15 and hist[-1]["step"] == 150
    assert np.mean([h["loss"] for h in hist[-3:]]) < 0.6 * np.mean([h["loss"] for h in hist[:2]])  # loss falls
    t_imgs, t_findings, t_male, t_age = toy_set(96, seed=1)
    meta = {"image_size": 32, "age_mean": 55.0, "age_std": 20.0}
    out = predict(model, meta, t_imgs)
    for l in LEARNABLE:
        j = EVAL_LABELS.index(l)
        assert auroc(out["probs"][:, j], t_findings[:, j])["value"] > 0.8
    assert auroc(out["p_male"], t_male)["value"] > 0.8
    assert np.corrcoef(out["age"], t_age)[0, 1] > 0.5
    assert out["features"].shape == (96, 32)


def test_masked_losses_ignore_blank_targets():
    out = {"findings": torch.zeros(2, 3, requires_grad=True), "sex": torch.zeros(2), "age": torch.zeros(2)}
    nan = float("nan")
    losses = masked_losses(
        out, torch.tensor([[1.0, nan, nan], [nan, nan, nan]]), torch.tensor([nan, nan]), torch.tensor([nan, 1.0])
    )
    assert losses["loss_findings"].item() == pytest.approx(np.log(2))  # one observed entry, logit 0
    assert losses["loss_sex"].item() == 0.0 and losses["loss_age"].item() == pytest.approx(1.0)
    losses["loss_findings"].backward()
    grad = out["findings"].grad
    assert grad[0, 0] != 0 and (grad.flatten()[1:] == 0).all()  # blanks get no gradient


def test_augment_keeps_shape_and_range():
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)


def test_densenet121_takes_one_channel_and_gives_1024_features():
    model = EvaluatorNet("densenet121", len(EVAL_LABELS)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 64, 64))
        feats = model.features(torch.zeros(2, 1, 64, 64))
    assert out["findings"].shape == (2, len(EVAL_LABELS)) and feats.shape == (2, 1024)


def test_save_load_roundtrip(tmp_path):
    model = EvaluatorNet("small_cnn", len(EVAL_LABELS), width=4).eval()
    meta = {
        "arch": "small_cnn",
        "width": 4,
        "labels": list(EVAL_LABELS),
        "image_size": 16,
        "age_mean": 50.0,
        "age_std": 10.0,
        "feature_dim": 16,
    }
    save_evaluator(model, meta, tmp_path)
    loaded, meta2 = load_evaluator(tmp_path)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    a, b = predict(model, meta, imgs), predict(loaded, meta2, imgs)
    assert all(np.allclose(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="evaluator's size 16"):
        predict(loaded, meta2, np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(FileNotFoundError, match="train_evaluator"):
        load_evaluator(tmp_path / "missing")


def test_train_evaluator_input_errors_leave_no_folder(tmp_path):
    world = build_world(tmp_path, n_subjects=6)
    cfg = EvaluatorConfig(width=4, train=TrainLoop(steps=2, batch_size=4))
    no_train = world["df"].assign(split="test")
    no_train.to_parquet(tmp_path / "cohort/no_train.parquet")
    with pytest.raises(InputError, match="fewer than 2 train-split images"):
        train_evaluator(world["h5"], tmp_path / "cohort/no_train.parquet", cfg, tmp_path / "ev", device="cpu")
    world["df"].drop(columns="edema").to_parquet(tmp_path / "cohort/no_edema.parquet")
    with pytest.raises(InputError, match=r"\['edema'\] missing"):
        train_evaluator(world["h5"], tmp_path / "cohort/no_edema.parquet", cfg, tmp_path / "ev", device="cpu")
    bad = world["df"].copy()
    bad.loc[0, "edema"] = -1.0
    bad.to_parquet(tmp_path / "cohort/bad.parquet")
    with pytest.raises(InputError, match="column edema"):
        train_evaluator(world["h5"], tmp_path / "cohort/bad.parquet", cfg, tmp_path / "ev", device="cpu")
    with pytest.raises(InputError, match="image file not found"):
        train_evaluator(tmp_path / "none.h5", world["images"], cfg, tmp_path / "ev", device="cpu")
    assert not (tmp_path / "ev").exists() and not list(tmp_path.glob(".ev.*"))
    summary = train_evaluator(world["h5"], world["images"], cfg, tmp_path / "ev", device="cpu")
    assert summary["steps"] == 2 and (tmp_path / "ev/metrics.csv").exists()
    assert pd.read_csv(tmp_path / "ev/metrics.csv").columns[:2].tolist() == ["step", "loss"]
