"""The autoencoder's optional patch discriminator (`vae.discriminator_*`): off by default; before its start
it changes nothing; after it, each network gets only its own term; it learns; the stage publishes the
autoencoder alone."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from ehrxdiff_core.config import TrainLoop, VaeConfig
from ehrxdiff_core.models.train_vae import train_vae
from ehrxdiff_core.models.training import run_training
from ehrxdiff_core.models.vae import PatchDiscriminator, VaeTrainer, build_vae, load_vae
from test_models_training import CPU, _images
from toy_world import write_world

torch.set_num_threads(1)
SMALL = VaeConfig(block_out_channels=[8, 16], layers_per_block=1)


def _trainer(**kw) -> VaeTrainer:
    torch.manual_seed(0)
    vae = build_vae(SMALL, 16)
    torch.manual_seed(1)
    return VaeTrainer(vae, 1e-6, **kw)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in module.named_parameters()}


def _backward(trainer: VaeTrainer, step: int) -> dict:
    trainer.zero_grad(set_to_none=True)
    loss, logs = trainer({"trg": _images(), "step": step}, torch.Generator().manual_seed(5))
    loss.backward()
    return logs


def test_the_discriminator_settings_are_validated_and_off_by_default():
    with pytest.raises(ValidationError, match="discriminator_weight"):
        VaeConfig(discriminator_weight=-0.5)
    with pytest.raises(ValidationError, match="discriminator_start"):
        VaeConfig(discriminator_start=-1)
    assert VaeConfig().discriminator_weight == 0
    assert _trainer().discriminator is None
    assert isinstance(_trainer(discriminator_weight=0.5).discriminator, PatchDiscriminator)


def test_before_its_start_the_discriminator_changes_nothing():
    plain, adv = _trainer(), _trainer(discriminator_weight=0.5, discriminator_start=10)
    adv.vae.load_state_dict(plain.vae.state_dict())
    _backward(plain, 3)
    logs = _backward(adv, 3)
    for (k, a), b in zip(_grads(plain.vae).items(), _grads(adv.vae).values(), strict=True):
        assert torch.equal(a, b), k
    assert float(logs["g_weight"]) == 0
    assert all(float(g.abs().max()) == 0 for g in _grads(adv.discriminator).values())


def test_after_its_start_each_network_gets_only_its_own_term():
    plain, adv = _trainer(), _trainer(discriminator_weight=0.5, discriminator_start=10)
    adv.vae.load_state_dict(plain.vae.state_dict())
    _backward(plain, 10)
    logs = _backward(adv, 10)
    assert float(logs["g_weight"]) > 0
    # the autoencoder also gets the generator term
    diff = max(float((a - b).abs().max()) for a, b in zip(_grads(plain.vae).values(), _grads(adv.vae).values()))
    assert diff > 1e-6
    # the discriminator gets the gradient of its own hinge loss and nothing from the generator term
    x = _images()
    with torch.no_grad():
        rec = adv.vae.decode(adv.vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(5))).sample
    d = adv.discriminator
    d_loss = 0.5 * (F.relu(1.0 - d(x)).mean() + F.relu(1.0 + d(rec)).mean())
    expected = torch.autograd.grad(d_loss, list(d.parameters()))
    _backward(adv, 10)
    for (k, got), want in zip(_grads(d).items(), expected, strict=True):
        torch.testing.assert_close(got, want, msg=k)
    assert float(d_loss.detach()) == pytest.approx(float(logs["d_loss"]), rel=1e-5)


def test_the_discriminator_learns_to_tell_reconstructions_from_images(tmp_path):
    trainer = _trainer(discriminator_weight=0.5)
    x = _images(16)
    res = run_training(
        trainer,
        lambda step, micro, rank, world: {"trg": x, "step": step},
        TrainLoop(steps=40, batch_size=16, lr=2e-3, checkpoint_every=100),
        tmp_path,
        {},
        CPU,
    )
    d_first = sum(r["d_loss"] for r in res.metrics[:5]) / 5
    d_last = sum(r["d_loss"] for r in res.metrics[-5:]) / 5
    assert d_first > 0.9  # chance: logits near 0 give a hinge loss near 1
    assert d_last < 0.8 * d_first
    assert all(r["l1"] == r["l1"] for r in res.metrics)  # no NaN


def test_the_stage_trains_with_it_and_publishes_the_autoencoder_alone(tmp_path):
    w = write_world(tmp_path / "world", n_pairs=16, size=16, dim=8, max_len=4, drop_image=True)
    cfg = VaeConfig(
        block_out_channels=[8, 8],
        discriminator_weight=0.5,
        discriminator_start=2,
        train=TrainLoop(steps=4, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=1),
    )
    out = tmp_path / "vae"
    train_vae(w["images"], w["triplets"], cfg, out)
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["g_weight"] > 0) == [False, False, True, True]
    assert {"d_loss", "g_loss"} <= set(metrics.columns)
    vae = load_vae(out)
    assert not any("discriminator" in k for k in vae.state_dict())
    assert vae(_images(2)).sample.shape == (2, 1, 16, 16)
