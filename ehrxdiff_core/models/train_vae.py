"""The `train_vae` stage: train the KL autoencoder on train-split images, or import a pretrained one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrxdiff_core.artifacts.images import open_image_store
from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.config import PRETRAINED_REQUIRED, SCALE_WITHOUT_IMPORT, VaeConfig
from ehrxdiff_core.models.datasets import PairBatches, load_pairs
from ehrxdiff_core.models.ddp import barrier, init_distributed
from ehrxdiff_core.models.runs import default_work_dir, make_batch_fn, prepare_data, publish, summary
from ehrxdiff_core.models.training import run_training
from ehrxdiff_core.models.vae import CHEFF_SCALE, VaeTrainer, build_vae, estimate_scale, import_pretrained

log = logging.getLogger(__name__)


def train_vae(
    images_h5, triplets, cfg: VaeConfig, out_dir, device="auto", work_dir=None, image_cache_fraction: float = 0.5
) -> dict:
    """Train the KL autoencoder on train-split images, or import `cfg.pretrained`; write `out_dir`.

    Latent scale: an import takes `vae.scaling_factor`, else the Cheff constant (checkpoint file) or the
    folder's own value (diffusers folder); a trained autoencoder's is always estimated from its data.
    """
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    if (
        not cfg.pretrained and cfg.scaling_factor is not None
    ):  # the config refuses it; a copy made without validation too
        raise ValueError(SCALE_WITHOUT_IMPORT.format(cfg.scaling_factor))
    if not cfg.pretrained and cfg.require_pretrained:
        raise ValueError(PRETRAINED_REQUIRED)
    store = open_image_store(images_h5)
    if cfg.pretrained:
        vae = import_pretrained(cfg.pretrained, store.size)
        scale = cfg.scaling_factor or (vae.config.scaling_factor if Path(cfg.pretrained).is_dir() else CHEFF_SCALE)
        vae.register_to_config(scaling_factor=float(scale))
        with atomic_dir(out_dir) as tmp:
            vae.save_pretrained(tmp)
            (tmp / "import.json").write_text(json.dumps({"source": str(cfg.pretrained), "scaling_factor": scale}))
        return {"imported": str(cfg.pretrained), "scaling_factor": float(scale)}

    info = init_distributed(device)
    pairs = load_pairs(triplets, "train", store)
    ids = sorted(set(pairs["prev_dicom_id"]) | set(pairs["trg_dicom_id"]))
    images = pd.DataFrame({"pair_id": ids, "prev_dicom_id": ids, "trg_dicom_id": ids})
    data = PairBatches(images, images_h5, None, 1)
    cached = prepare_data(data, image_cache_fraction, info)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every run (DDP also broadcasts rank 0's)
    vae = build_vae(cfg, store.size)
    if cfg.train.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    trainer = VaeTrainer(
        vae, cfg.kl_weight, cfg.discriminator_weight, cfg.discriminator_start, cfg.discriminator_layers
    )
    batches = make_batch_fn(data, cfg.train, False)
    res = run_training(
        trainer,
        lambda step, micro, rank, world: {**batches(step, micro, rank, world), "step": step},
        cfg.train,
        work_dir,
        cfg.model_dump(mode="json"),
        info,
        name="vae",
    )
    out = {**summary(res), "n_images": len(ids), "images_cached": cached}
    if info.is_main:
        final = res.ema_copy().vae.cpu().eval()
        sample_ids = ids[:: max(1, len(ids) // 512)]
        scale = estimate_scale(final, data.get(np.arange(len(ids))[:: max(1, len(ids) // 512)], False)["trg"])
        log.info(
            "vae: latent scale %.5f estimated from %d training images (1 / std of the latents)", scale, len(sample_ids)
        )
        final.register_to_config(scaling_factor=float(scale))
        f = 2 ** (len(cfg.block_out_channels) - 1)
        out.update(
            scaling_factor=float(scale),
            latent_shape=[cfg.latent_channels, store.size // f, store.size // f],
            n_scale_images=len(sample_ids),
        )
        publish(out_dir, work_dir, lambda tmp: final.save_pretrained(tmp))
    barrier(info)
    return out
