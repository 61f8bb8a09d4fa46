"""The `train_clip` stage: contrastive pretraining of the CXR–EHR CLIP."""

from __future__ import annotations

from pathlib import Path

import torch

from ehrxdiff_core.artifacts.images import open_image_store
from ehrxdiff_core.config import ClipConfig
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.datasets import PairBatches, load_pairs, open_embedding_reader
from ehrxdiff_core.models.ddp import barrier, init_distributed
from ehrxdiff_core.models.runs import default_work_dir, make_batch_fn, prepare_data, publish, summary
from ehrxdiff_core.models.training import run_training


def train_clip(
    images_h5,
    embeddings_h5,
    triplets,
    cfg: ClipConfig,
    max_events: int,
    out_dir,
    device="auto",
    work_dir=None,
    image_cache_fraction: float = 0.5,
) -> dict:
    """Contrastive pretraining of the ViT and the event encoder on (events, previous image) train pairs."""
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    info = init_distributed(device)
    store, reader = open_image_store(images_h5), open_embedding_reader(embeddings_h5)
    pairs = load_pairs(triplets, "train", store, reader)
    data = PairBatches(pairs, images_h5, embeddings_h5, max_events)
    cached = prepare_data(data, image_cache_fraction, info)
    torch.manual_seed(cfg.train.seed)
    model = ClipModel(cfg, reader.dim, cfg.image_size or store.size)
    res = run_training(
        model,
        make_batch_fn(data, cfg.train, True),
        cfg.train,
        work_dir,
        {**cfg.model_dump(mode="json"), "max_events": max_events, "event_dim": reader.dim},
        info,
        name="clip",
    )
    out = {
        **summary(res),
        "n_pairs": len(pairs),
        "event_dim": reader.dim,
        "vision_init": model.vision_init,
        "images_cached": cached,
    }
    if info.is_main:
        final = res.ema_copy().cpu().eval()
        publish(out_dir, work_dir, final.save)
    barrier(info)
    return out
