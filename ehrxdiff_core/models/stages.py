"""Entry points called by the workflow scripts: train_vae, train_clip, train_ldm, sample.

Each trains in a working folder (`<out_dir>.work/` by default, which survives Snakemake's removal
of a failed output, so a retry resumes from its checkpoint.pt) and publishes the final folder
atomically: diffusers-style weights + config JSON, checkpoint.pt, metrics.csv, loss.png.
Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.config import PRETRAINED_REQUIRED, SCALE_WITHOUT_IMPORT, ClipConfig, LdmConfig, SampleConfig, TrainLoop, VaeConfig
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.datasets import (
    PairBatches,
    add_null_samples,
    image_cache_budget,
    load_pairs,
    open_embedding_reader,
    open_image_store,
    pair_seed,
    step_indices,
)
from ehrxdiff_core.models.ddp import barrier, init_distributed
from ehrxdiff_core.models.ldm import LatentDiffusion, build_unet, load_ldm
from ehrxdiff_core.models.sampling import sample_seeds
from ehrxdiff_core.samples_folder import sample_path, write_manifest
from ehrxdiff_core.models.training import TrainResult, run_training, trainable_params
from ehrxdiff_core.models.vae import CHEFF_SCALE, VaeTrainer, build_vae, estimate_scale, import_pretrained

log = logging.getLogger(__name__)

TRAIN_FILES = ("checkpoint.pt", "metrics.csv", "loss.png")


def default_work_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".work")


def make_batch_fn(data: PairBatches, loop: TrainLoop, with_events: bool):
    """Step → rank's micro-batch: a slice of the global batch drawn by `step_indices(seed, step)`."""

    def batch_fn(step: int, micro: int, rank: int, world: int) -> dict:
        b = loop.batch_size
        idx = step_indices(len(data), b * loop.grad_accum * world, step, loop.seed)
        start = (micro * world + rank) * b
        return data.get(idx[start : start + b], with_events=with_events)

    return batch_fn


def _prepare_data(data: PairBatches, image_cache_fraction: float, info) -> bool:
    """Open the readers and cache the images when they fit in this process's share (`compute.image_cache_fraction`
    of the job's memory, split between the processes torchrun started on this node); True when cached."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    return data.prepare(image_cache_budget(image_cache_fraction, processes))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when both are on one filesystem (the paper LDM's checkpoint.pt is ~8 GB), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _publish(out_dir: Path, work_dir: Path, write) -> None:
    """Write the final folder atomically: `write(tmp)` + the training files from the working folder.

    The working folder keeps its own name for each file until the folder is published, so a failure
    before that leaves it resumable; it is removed after.
    """
    with atomic_dir(out_dir) as tmp:
        write(tmp)
        for name in TRAIN_FILES:
            if (work_dir / name).exists():
                _link_or_copy(work_dir / name, tmp / name)
    shutil.rmtree(work_dir, ignore_errors=True)


def _summary(res: TrainResult) -> dict:
    last = res.metrics[-10:]
    return {"steps": res.step, "final_loss": float(np.mean([r["loss"] for r in last])) if last else None,
            "first_loss": res.metrics[0]["loss"] if res.metrics else None}


def load_vae(vae_dir: str | Path):
    from diffusers import AutoencoderKL

    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").exists():
        raise FileNotFoundError(f"vae_dir: no autoencoder (config.json) in {vae_dir}; run train_vae first")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.requires_grad_(False).eval()
    return vae


# ------------------------------------------------------------------------------------------------ VAE


def train_vae(images_h5, triplets, cfg: VaeConfig, out_dir, device="auto", work_dir=None, image_cache_fraction: float = 0.5) -> dict:
    """Train the KL autoencoder on train-split images, or import `cfg.pretrained`; write `out_dir`.

    Latent scale: an import takes `vae.scaling_factor`, else the Cheff constant (checkpoint file) or the
    folder's own value (diffusers folder); a trained autoencoder's is always estimated from its data.
    """
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    if not cfg.pretrained and cfg.scaling_factor is not None:  # the config refuses it; a copy made without validation too
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
    cached = _prepare_data(data, image_cache_fraction, info)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every run (DDP also broadcasts rank 0's)
    vae = build_vae(cfg, store.size)
    if cfg.train.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    trainer = VaeTrainer(vae, cfg.kl_weight)
    res = run_training(trainer, make_batch_fn(data, cfg.train, False), cfg.train, work_dir,
                       cfg.model_dump(mode="json"), info, name="vae")
    out = {**_summary(res), "n_images": len(ids), "images_cached": cached}
    if info.is_main:
        final = res.ema_copy().vae.cpu().eval()
        sample_ids = ids[:: max(1, len(ids) // 512)]
        scale = estimate_scale(final, data.get(np.arange(len(ids))[:: max(1, len(ids) // 512)], False)["trg"])
        log.info("vae: latent scale %.5f estimated from %d training images (1 / std of the latents)", scale, len(sample_ids))
        final.register_to_config(scaling_factor=float(scale))
        f = 2 ** (len(cfg.block_out_channels) - 1)
        out.update(scaling_factor=float(scale), latent_shape=[cfg.latent_channels, store.size // f, store.size // f], n_scale_images=len(sample_ids))
        _publish(out_dir, work_dir, lambda tmp: final.save_pretrained(tmp))
    barrier(info)
    return out


# ----------------------------------------------------------------------------------------------- CLIP


def train_clip(images_h5, embeddings_h5, triplets, cfg: ClipConfig, max_events: int, out_dir, device="auto", work_dir=None,
               image_cache_fraction: float = 0.5) -> dict:
    """Contrastive pretraining of the ViT and the event encoder on (events, previous image) train pairs."""
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    info = init_distributed(device)
    store, reader = open_image_store(images_h5), open_embedding_reader(embeddings_h5)
    pairs = load_pairs(triplets, "train", store, reader)
    data = PairBatches(pairs, images_h5, embeddings_h5, max_events)
    cached = _prepare_data(data, image_cache_fraction, info)
    torch.manual_seed(cfg.train.seed)
    model = ClipModel(cfg, reader.dim, cfg.image_size or store.size)
    res = run_training(model, make_batch_fn(data, cfg.train, True), cfg.train, work_dir,
                       {**cfg.model_dump(mode="json"), "max_events": max_events, "event_dim": reader.dim}, info, name="clip")
    out = {**_summary(res), "n_pairs": len(pairs), "event_dim": reader.dim, "vision_init": model.vision_init,
           "images_cached": cached}
    if info.is_main:
        final = res.ema_copy().cpu().eval()
        _publish(out_dir, work_dir, final.save)
    barrier(info)
    return out


# ------------------------------------------------------------------------------------------------ LDM


def build_latent_diffusion(cfg: LdmConfig, vae, clip: ClipModel, image_size: int, max_events: int,
                           mask_events: bool = False) -> LatentDiffusion:
    """The U-Net + adapter for a given autoencoder and CLIP (its rebuild spec is the model's `config`)."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, image_size // f, image_size // f)
    adapter = FusionAdapter(cfg.adapter, clip, latent_shape, cfg.cross_attention_dim, max_events)
    unet = build_unet(cfg, latent_shape[0], latent_shape[1])
    return LatentDiffusion(cfg, unet, adapter, vae, mask_events=mask_events)


def train_ldm(images_h5, embeddings_h5, triplets, vae_dir, clip_dir, cfg: LdmConfig, max_events: int, out_dir,
              device="auto", work_dir=None, mask_events: bool = False, image_cache_fraction: float = 0.5) -> dict:
    """Train the conditional U-Net and the fusion adapter (CLIP encoders from `clip_dir`, trained jointly).

    `mask_events=True` trains the image-only control: same pairs, architecture, budget and seed, with
    every row given the null condition (its batches carry no event embeddings).
    """
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    info = init_distributed(device)
    vae = load_vae(vae_dir)
    clip = ClipModel.load(clip_dir)
    store = open_image_store(images_h5)
    reader = open_embedding_reader(embeddings_h5) if cfg.adapter.use_ehr else None
    if reader is not None and reader.dim != clip.event_dim:
        raise ValueError(f"{embeddings_h5}: embedding dim {reader.dim} differs from the CLIP model's {clip.event_dim} ({clip_dir}); retrain CLIP")
    pairs = load_pairs(triplets, "train", store, reader)  # the image-only control filters the same pairs
    if cfg.null_augmentation:
        pairs = add_null_samples(pairs)
    with_events = cfg.adapter.use_ehr and not mask_events
    data = PairBatches(pairs, images_h5, embeddings_h5 if with_events else None, max_events)
    cached = _prepare_data(data, image_cache_fraction, info)
    torch.manual_seed(cfg.train.seed)
    model = build_latent_diffusion(cfg, vae, clip, store.size, max_events, mask_events)
    if cfg.train.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    run_config = {**cfg.model_dump(mode="json"), "max_events": max_events, "vae_scale": model.scale}
    if mask_events:  # only then: ehrxdiff's resume key stays what its existing checkpoints carry
        run_config["mask_events"] = True
    res = run_training(model, make_batch_fn(data, cfg.train, with_events), cfg.train, work_dir, run_config, info, name="ldm")
    out = {**_summary(res), "n_pairs": len(pairs), "n_null": int(pairs.get("null", pd.Series(dtype=bool)).sum()), "mask_events": mask_events,
           "unet_params": sum(p.numel() for p in model.unet.parameters()),
           "adapter_trainable_params": sum(p.numel() for p in trainable_params(model.adapter)), "images_cached": cached}
    if info.is_main:
        live = res.model.cpu().eval()

        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            live.save(tmp)
            if res.ema is not None:
                ema = res.ema_copy()
                ema.unet.save_pretrained(tmp / "unet_ema")
                (tmp / "adapter_ema").mkdir()
                save_file({k: v.detach().cpu().contiguous() for k, v in ema.adapter.state_dict().items()},
                          tmp / "adapter_ema" / "model.safetensors")

        _publish(out_dir, work_dir, write)
    barrier(info)
    return out


# ------------------------------------------------------------------------------------------- sampling


def sample(images_h5, embeddings_h5, triplets, vae_dir, ldm_dir, cfg: SampleConfig, max_events: int, out_dir, device="auto") -> dict:
    """Predict target images for the pairs of `cfg.split`, `cfg.n_seeds` per pair, atomically: seed index 0 at
    `{pair_id}.png`, k ≥ 1 at `seed{k}/{pair_id}.png`, one `manifest.parquet` row per image (`MANIFEST_SCHEMA`).
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
        raise ValueError(f"{images_h5}: images are {store.size} px but {ldm_dir} was trained at {trained_size} px (images.size)")
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
            batch = {key: (v.to(dev) if torch.is_tensor(v) else v) for key, v in data.get(idx, with_events=with_events).items()}
            seed_lists = [[pair_seed(cfg.seed + k, p) for p in batch["pair_id"]] for k in range(cfg.n_seeds)]
            results = sample_seeds(model, batch, cfg, seed_lists, dev)
            for i, pid in enumerate(batch["pair_id"]):
                for k, ((imgs, secs), seeds) in enumerate(zip(results, seed_lists)):
                    path = sample_path(pid, k)
                    (tmp / path).parent.mkdir(exist_ok=True)
                    Image.fromarray(imgs[i], mode="L").save(tmp / path)
                    rows.append({"pair_id": pid, "seed_index": k, "seed": seeds[i], "path": path, "sampler": cfg.sampler,
                                 "steps": cfg.steps, "guidance": cfg.guidance_scale, "seconds": secs / len(idx)})
        write_manifest(tmp, rows)
    return {"n": len(rows), "n_pairs": len(pairs), "n_seeds": cfg.n_seeds, "mask_events": model.mask_events,
            "seconds_per_image": float(np.mean([r["seconds"] for r in rows])), "sampler": cfg.sampler, "steps": cfg.steps}
