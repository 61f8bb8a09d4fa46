"""Inception FID loading path with a stand-in weights file (random weights: plumbing and shapes only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ehrxdiff_core.config import EvaluateConfig
from ehrxdiff_core.evaluation import inception
from ehrxdiff_core.evaluation.evaluate import evaluate
from ehrxdiff_core.evaluation.inception import WeightsError, inception_features, load_fid_inception, sha256_of

torch.set_num_threads(1)


def fid_inception_layout_state_dict() -> dict:
    """A random state dict with pytorch-fid's FID Inception layout, built the way `fid_inception_v3` builds it."""
    import pytorch_fid.inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net.state_dict()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-6726825d.pth"  # the name alone proves nothing
    torch.save(fid_inception_layout_state_dict(), path)
    return path


def test_wrong_hash_is_a_clear_error_naming_the_key(standin):
    assert not sha256_of(standin).startswith(inception.FID_WEIGHTS_SHA256_PREFIX)
    with pytest.raises(WeightsError, match=r"evaluate\.inception_weights.*expected prefix 6726825d"):
        load_fid_inception(standin)


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(WeightsError, match=r"evaluate\.inception_weights: weights file not found"):
        load_fid_inception(tmp_path / "nope.pth")


def test_wrong_layout_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match="layout"):
        load_fid_inception(path, expected_prefix=sha256_of(path)[:8])


def test_right_hash_and_layout_give_2048_features(standin):
    import pytorch_fid.inception as pfi

    before = pfi.load_state_dict_from_url
    model = load_fid_inception(standin, expected_prefix=sha256_of(standin)[:8])
    assert pfi.load_state_dict_from_url is before  # the download hook is restored
    sd = fid_inception_layout_state_dict()
    key = "Conv2d_1a_3x3.conv.weight"
    loaded = dict(model.named_parameters())["blocks.0.0.conv.weight"]
    assert torch.equal(loaded, torch.load(standin, weights_only=True)[key]) and not torch.equal(loaded, sd[key])
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    feats = inception_features(model, images, batch_size=2)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()


def test_evaluate_records_inception_fid_when_weights_given(standin, tmp_path, monkeypatch):
    from ehrxdiff_core.evaluation.train_evaluator import train_evaluator
    from test_eval_stages import build_world, tiny_evaluator_cfg, write_samples

    world = build_world(tmp_path, n_subjects=20)
    train_evaluator(world["h5"], world["images"], tiny_evaluator_cfg(steps=20), tmp_path / "ev", device="cpu")
    samples = {"ehrxdiff": write_samples(tmp_path / "samples/test", world["triplets"], world["df"], "target")}
    calls = []

    def cheap_features(model, images, device="cpu", batch_size=32):  # the real forward is ~0.25 s/image on CPU
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :8].astype(np.float64) + np.arange(8)

    monkeypatch.setattr(inception, "inception_features", cheap_features)
    cfg = EvaluateConfig(inception_weights=str(standin))
    out = tmp_path / "metrics.json"
    with pytest.raises(WeightsError, match="evaluate.inception_weights"):  # the pipeline checks the real prefix
        evaluate(samples, world["h5"], world["triplets"], tmp_path / "ev", cfg, {}, out, device="cpu")
    assert not out.exists()
    res = evaluate(
        samples,
        world["h5"],
        world["triplets"],
        tmp_path / "ev",
        cfg,
        {},
        out,
        device="cpu",
        _inception_sha256_prefix=sha256_of(standin)[:8],
    )
    fid = res["methods"]["ehrxdiff"]["fid"]["inception"]
    assert (
        fid["computed"] and fid["value"] is not None and fid["floor"] is not None and "pytorch-fid" in fid["extractor"]
    )
    assert calls == [res["settings"]["n_pairs"]] * 3  # ehrxdiff, previous_image, real_target
    assert json.loads(out.read_text())["methods"]["real_target"]["fid"]["inception"]["computed"]
