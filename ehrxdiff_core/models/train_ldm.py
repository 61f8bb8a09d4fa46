"""The `train_ldm` stage (and its image-only control): the conditional U-Net and the fusion adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrxdiff_core.config import LdmConfig
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.datasets import (
    PairBatches,
    add_null_samples,
    load_pairs,
    open_embedding_reader,
    open_image_store,
)
from ehrxdiff_core.models.ddp import barrier, init_distributed
from ehrxdiff_core.models.ldm import LatentDiffusion, build_unet
from ehrxdiff_core.models.runs import default_work_dir, make_batch_fn, prepare_data, publish, summary
from ehrxdiff_core.models.training import run_training, trainable_params
from ehrxdiff_core.models.vae import load_vae

RESIDUAL_SCALE_PAIRS = 512  # training pairs (evenly spread over the table) whose latent change sets `residual_scale`


def build_latent_diffusion(
    cfg: LdmConfig, vae, clip: ClipModel, image_size: int, max_events: int, mask_events: bool = False
) -> LatentDiffusion:
    """The U-Net + adapter for a given autoencoder and CLIP (its rebuild spec is the model's `config`)."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, image_size // f, image_size // f)
    adapter = FusionAdapter(cfg.adapter, clip, latent_shape, cfg.cross_attention_dim, max_events)
    unet = build_unet(cfg, latent_shape[0], latent_shape[1])
    return LatentDiffusion(cfg, unet, adapter, vae, mask_events=mask_events)


def train_ldm(
    images_h5,
    embeddings_h5,
    triplets,
    vae_dir,
    clip_dir,
    cfg: LdmConfig,
    max_events: int,
    out_dir,
    device="auto",
    work_dir=None,
    mask_events: bool = False,
    image_cache_fraction: float = 0.5,
) -> dict:
    """Train the conditional U-Net and the fusion adapter (CLIP encoders from `clip_dir`, trained jointly).

    `mask_events=True` trains the image-only control: same pairs, architecture, budget and seed, with
    every row given the null condition (its batches carry no event embeddings). `cfg.register_target`
    trains on targets moved onto their previous images (`PairBatches`), for both (`cfg.register_exposure`:
    at their previous images' exposure too).
    """
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    info = init_distributed(device)
    vae = load_vae(vae_dir)
    clip = ClipModel.load(clip_dir)
    store = open_image_store(images_h5)
    reader = open_embedding_reader(embeddings_h5) if cfg.adapter.use_ehr else None
    if reader is not None and reader.dim != clip.event_dim:
        raise ValueError(
            f"{embeddings_h5}: embedding dim {reader.dim} differs from the CLIP model's "
            f"{clip.event_dim} ({clip_dir}); retrain CLIP"
        )
    pairs = load_pairs(triplets, "train", store, reader)  # the image-only control filters the same pairs
    if cfg.null_augmentation:
        pairs = add_null_samples(pairs)
    with_events = cfg.adapter.use_ehr and not mask_events
    data = PairBatches(
        pairs,
        images_h5,
        embeddings_h5 if with_events else None,
        max_events,
        register_targets=cfg.register_target,
        register_exposure=cfg.register_exposure,
    )
    cached = prepare_data(data, image_cache_fraction, info)
    torch.manual_seed(cfg.train.seed)
    model = build_latent_diffusion(cfg, vae, clip, store.size, max_events, mask_events)
    if cfg.target == "residual":
        idx = np.unique(np.linspace(0, len(data) - 1, min(len(data), RESIDUAL_SCALE_PAIRS)).round().astype(int))
        b = cfg.train.batch_size
        model.fit_residual_scale(data.get(idx[i : i + b], with_events=False) for i in range(0, len(idx), b))
    if cfg.train.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    run_config = {**cfg.model_dump(mode="json"), "max_events": max_events, "vae_scale": model.scale}
    if mask_events:  # only then: ehrxdiff's resume key stays what its existing checkpoints carry
        run_config["mask_events"] = True
    res = run_training(
        model, make_batch_fn(data, cfg.train, with_events), cfg.train, work_dir, run_config, info, name="ldm"
    )
    out = {
        **summary(res),
        "n_pairs": len(pairs),
        "n_null": int(pairs.get("null", pd.Series(dtype=bool)).sum()),
        "mask_events": mask_events,
        "unet_params": sum(p.numel() for p in model.unet.parameters()),
        "adapter_trainable_params": sum(p.numel() for p in trainable_params(model.adapter)),
        "images_cached": cached,
        "target": cfg.target,
        "residual_scale": model.residual_scale if cfg.target == "residual" else None,
    }
    if info.is_main:
        live = res.model.cpu().eval()

        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            live.save(tmp)
            if res.ema is not None:
                ema = res.ema_copy()
                ema.unet.save_pretrained(tmp / "unet_ema")
                (tmp / "adapter_ema").mkdir()
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in ema.adapter.state_dict().items()},
                    tmp / "adapter_ema" / "model.safetensors",
                )

        publish(out_dir, work_dir, write)
    barrier(info)
    return out
