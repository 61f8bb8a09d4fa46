"""The shared training loop: losses fall, resume reproduces the uninterrupted run, SIGTERM
checkpoints and exits non-zero."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ehrxdiff_core.config import AdapterConfig, ClipConfig, LdmConfig, TrainLoop, VaeConfig
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.ddp import DistInfo
from ehrxdiff_core.models.ldm import LatentDiffusion, build_unet
from ehrxdiff_core.models.training import PREEMPT_EXIT_CODE, run_training
from ehrxdiff_core.models.vae import VaeTrainer, build_vae, estimate_scale

torch.set_num_threads(1)
CPU = DistInfo()
TINY_CLIP = ClipConfig(
    patch_size=8,
    vision_width=16,
    vision_layers=1,
    vision_heads=2,
    tab_width=16,
    tab_heads=2,
    tab_ff=32,
    embed_dim=16,
    augment_crop_scale=None,
)


def _images(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size + 3, size + 3, generator=g), 4, 1) * 2 - 1
    return x.clamp(-1, 1)


def _pairs(n=8, size=16, dim=8, events=4, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return {
        "prev": _images(n, size, seed),
        "trg": _images(n, size, seed + 7),
        "events": torch.randn(n, events, dim, generator=g),
        "mask": torch.arange(events).expand(n, -1) < torch.randint(1, events + 1, (n, 1), generator=g),
        "null": torch.zeros(n, dtype=torch.bool),
        "pair_id": [str(i) for i in range(n)],
    }


def fixed(batch):
    return lambda step, micro, rank, world: batch


def tiny_ldm(seed=0, mode="paper", conditioning="hybrid", prediction_type="v_prediction"):
    torch.manual_seed(seed)
    vae = build_vae(VaeConfig(block_out_channels=[8, 8], layers_per_block=1), 16)
    with torch.no_grad():  # a trained VAE's posterior is narrow; a random one's has std 1 (targets = pure noise)
        vae.quant_conv.weight[3:] = 0
        vae.quant_conv.bias[3:] = -12
    vae.register_to_config(scaling_factor=estimate_scale(vae, _images()))  # unit-variance latents, as train_vae does
    clip = ClipModel(TINY_CLIP, 8, 16)
    cfg = LdmConfig(
        block_out_channels=[16, 16],
        attention_levels=[False, True],
        num_heads=2,
        cross_attention_dim=16,
        adapter=AdapterConfig(mode=mode),
        conditioning=conditioning,
        prediction_type=prediction_type,
    )
    adapter = FusionAdapter(cfg.adapter, clip, (3, 8, 8), 16, 4)
    return LatentDiffusion(cfg, build_unet(cfg, 3, 8), adapter, vae)


def _drop(metrics, k=5):
    losses = [r["loss"] for r in metrics]
    return np.mean(losses[:k]), np.mean(losses[-k:])


def test_vae_loss_falls(tmp_path):
    torch.manual_seed(0)
    model = VaeTrainer(build_vae(VaeConfig(block_out_channels=[8, 16], layers_per_block=1), 16), 1e-6)
    res = run_training(
        model,
        fixed({"trg": _images()}),
        TrainLoop(steps=30, batch_size=8, lr=2e-3, checkpoint_every=100),
        tmp_path,
        {},
        CPU,
    )
    first, last = _drop(res.metrics)
    assert last < 0.6 * first


def test_clip_loss_falls(tmp_path):
    torch.manual_seed(0)
    model = ClipModel(TINY_CLIP, 8, 16)
    res = run_training(
        model, fixed(_pairs()), TrainLoop(steps=30, batch_size=8, lr=2e-3, checkpoint_every=100), tmp_path, {}, CPU
    )
    first, last = _drop(res.metrics)
    assert last < 0.5 * first  # 8 fixed pairs: the encoders learn to match them


@pytest.mark.parametrize(
    "mode,conditioning,prediction", [("paper", "crossattn", "epsilon"), ("masked", "hybrid", "v_prediction")]
)
def test_ldm_loss_falls(tmp_path, mode, conditioning, prediction):
    model = tiny_ldm(mode=mode, conditioning=conditioning, prediction_type=prediction)
    assert model.unet.config.in_channels == (6 if conditioning == "hybrid" else 3)
    res = run_training(
        model, fixed(_pairs()), TrainLoop(steps=40, batch_size=8, lr=2e-3, checkpoint_every=100), tmp_path, {}, CPU
    )
    first, last = _drop(res.metrics, 8)
    assert last < 0.7 * first


def test_resume_reproduces_uninterrupted_run(tmp_path):
    loop = TrainLoop(steps=6, batch_size=8, lr=1e-3, checkpoint_every=2, ema_decay=0.9)
    batches = {s: _pairs(seed=s) for s in range(6)}

    def batch_fn(step, micro, rank, world):
        return batches[step]

    full = run_training(tiny_ldm(), batch_fn, loop, tmp_path / "a", {"train": {"steps": 6}}, CPU)
    part = run_training(
        tiny_ldm(), batch_fn, loop.model_copy(update={"steps": 3}), tmp_path / "b", {"train": {"steps": 3}}, CPU
    )
    assert part.step == 3
    fresh = tiny_ldm()
    with torch.no_grad():  # weights that differ: the checkpoint must replace them
        for p in fresh.unet.parameters():
            p.normal_()
    resumed = run_training(fresh, batch_fn, loop, tmp_path / "b", {"train": {"steps": 6}}, CPU)
    assert resumed.step == 6
    np.testing.assert_allclose(
        [r["loss"] for r in resumed.metrics], [r["loss"] for r in full.metrics], rtol=1e-6, atol=1e-7
    )
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    ema_a, ema_b = full.ema_copy().state_dict(), resumed.ema_copy().state_dict()
    assert all(torch.allclose(ema_a[k], ema_b[k], atol=1e-7) for k in ema_a)
    # a different config does not resume from a foreign checkpoint
    other = run_training(
        tiny_ldm(), batch_fn, loop.model_copy(update={"steps": 1}), tmp_path / "b", {"train": {"steps": 1}, "x": 1}, CPU
    )
    assert other.step == 1 and len(other.metrics) == 1


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_models_training import tiny_ldm, _pairs, CPU
    from ehrxdiff_core.config import TrainLoop
    from ehrxdiff_core.models.training import run_training
    flag = Path({flag!r})
    batch = _pairs()
    def batch_fn(step, micro, rank, world):
        if step == 2:
            flag.touch()
        return batch
    loop = TrainLoop(steps=100000, batch_size=8, checkpoint_every=100000)
    run_training(tiny_ldm(), batch_fn, loop, {work!r}, {{}}, CPU)
    """
)


def test_sigterm_saves_checkpoint_and_exits_nonzero(tmp_path):
    flag, work = tmp_path / "started", tmp_path / "work"
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), flag=str(flag), work=str(work)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert flag.exists(), proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == PREEMPT_EXIT_CODE, out[-2000:]
    state = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=True)  # tensors and plain values only
    assert 2 <= state["step"] < 100000
    assert {"model", "ema", "optimizer", "scheduler", "rng", "step", "config"} <= set(state)
    tiny_ldm().load_state_dict(state["model"])  # loadable into a fresh model
    assert (work / "metrics.csv").exists()


def test_dataloader_workers_give_the_same_run(tmp_path):
    batches = {s: _pairs(seed=s) for s in range(3)}

    def batch_fn(step, micro, rank, world):
        return batches[step]

    loop = TrainLoop(steps=3, batch_size=8, lr=1e-3, checkpoint_every=100)
    inline = run_training(tiny_ldm(), batch_fn, loop, tmp_path / "a", {}, CPU)
    workers = run_training(tiny_ldm(), batch_fn, loop.model_copy(update={"num_workers": 1}), tmp_path / "b", {}, CPU)
    np.testing.assert_allclose([r["loss"] for r in workers.metrics], [r["loss"] for r in inline.metrics], rtol=1e-6)


def test_trimming_padding_is_exact_where_padding_is_unused():
    torch.manual_seed(0)
    clip = ClipModel(TINY_CLIP, 8, 16).eval()
    b = _pairs(events=4)
    long_ev = torch.cat([b["events"], torch.randn(8, 12, 8)], 1)  # 12 more padded columns with garbage
    long_mask = torch.cat([b["mask"], torch.zeros(8, 12, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(
            clip.tab.pooled(long_ev, long_mask, "masked_mean"), clip.tab.pooled(b["events"], b["mask"], "masked_mean")
        )
        model = tiny_ldm(mode="masked").eval()
        pm = model.encode_prev(b["prev"])
        short, _, _ = model.condition(b, pm, b["null"])
        full, attn, _ = model.condition({**b, "events": long_ev, "mask": long_mask}, pm, b["null"])
    torch.testing.assert_close(short, full)  # same tokens: the batch's longest row sets the length
    assert attn.shape[1] == 4 + 3 + 5  # events + VAE channels + ViT tokens (2×2 patches + CLS)
