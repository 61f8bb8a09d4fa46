"""The `sample` stage: predicted target images for one split, several seeds per pair."""

from __future__ import annotations

import numpy as np
import torch

from ehrxdiff_core.artifacts.images import open_image_store
from ehrxdiff_core.artifacts.samples import sample_path, write_manifest
from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.config import SampleConfig
from ehrxdiff_core.models.datasets import PairBatches, load_pairs, open_embedding_reader, pair_seed
from ehrxdiff_core.models.ldm import load_ldm
from ehrxdiff_core.models.sampling import sample_seeds
from ehrxdiff_core.models.vae import load_vae


def sample(
    images_h5, embeddings_h5, triplets, vae_dir, ldm_dir, cfg: SampleConfig, max_events: int, out_dir, device="auto"
) -> dict:
    """Predict target images for the pairs of `cfg.split`, `cfg.n_seeds` per pair, atomically: seed index 0 at
    `{pair_id}.png`, k ≥ 1 at `seed{k}/{pair_id}.png`, one `manifest.parquet`
    row per image (`artifacts.samples.MANIFEST`).
    An image-only model (`ldm_config.json` `mask_events`) is sampled with every event masked."""
    from PIL import Image
    from tqdm import tqdm

    from ehrxdiff_core.device import resolve_device

    dev = resolve_device(device)
    vae = load_vae(vae_dir)
    model = load_ldm(ldm_dir, vae, cfg.use_ema).to(dev)
    store = open_image_store(images_h5)
    trained_size = model.unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    if trained_size != store.size:
        raise ValueError(
            f"{images_h5}: images are {store.size} px but {ldm_dir} was trained at {trained_size} px (images.size)"
        )
    use_ehr = model.cfg.adapter.use_ehr
    reader = open_embedding_reader(embeddings_h5) if use_ehr else None
    pairs = load_pairs(triplets, cfg.split, store, reader)  # the image-only control samples the same pairs
    if cfg.max_pairs is not None:
        pairs = pairs.head(cfg.max_pairs)
    with_events = use_ehr and not model.mask_events
    data = PairBatches(pairs, images_h5, embeddings_h5 if with_events else None, max_events)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for start in tqdm(range(0, len(pairs), cfg.batch_size), desc="sample", mininterval=2.0):
            idx = np.arange(start, min(start + cfg.batch_size, len(pairs)))
            batch = {
                key: (v.to(dev) if torch.is_tensor(v) else v)
                for key, v in data.get(idx, with_events=with_events).items()
            }
            seed_lists = [[pair_seed(cfg.seed + k, p) for p in batch["pair_id"]] for k in range(cfg.n_seeds)]
            results = sample_seeds(model, batch, cfg, seed_lists, dev)
            for i, pid in enumerate(batch["pair_id"]):
                for k, ((imgs, secs), seeds) in enumerate(zip(results, seed_lists)):
                    path = sample_path(pid, k)
                    (tmp / path).parent.mkdir(exist_ok=True)
                    Image.fromarray(imgs[i], mode="L").save(tmp / path)
                    rows.append(
                        {
                            "pair_id": pid,
                            "seed_index": k,
                            "seed": seeds[i],
                            "path": path,
                            "sampler": cfg.sampler,
                            "steps": cfg.steps,
                            "guidance": cfg.guidance_scale,
                            "seconds": secs / len(idx),
                            "compose": cfg.compose,
                            "change_blur_px": cfg.change_blur_px,
                        }
                    )
        write_manifest(tmp, rows)
    return {
        "n": len(rows),
        "n_pairs": len(pairs),
        "n_seeds": cfg.n_seeds,
        "mask_events": model.mask_events,
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "compose": cfg.compose,
        "change_blur_px": cfg.change_blur_px,
    }
