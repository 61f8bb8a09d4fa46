"""KL autoencoder (diffusers `AutoencoderKL`): build, train loss, scale estimate, Cheff/LDM import.

Training uses reconstruction (L1) + `kl_weight`·KL only: Cheff's LPIPS and patch-GAN terms need
pretrained weights we cannot download, so a trained demo VAE is blurrier than Cheff's. For the
paper setting import Cheff's checkpoint (`vae.pretrained`); its LDM key layout is converted to
diffusers' with diffusers' own single-file conversion helper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ehrxdiff_core.config import VaeConfig

log = logging.getLogger(__name__)

CHEFF_SCALE = 0.18215  # Stable-Diffusion constant used by Cheff/EHRXDiff (not re-estimated)


def build_vae(cfg: VaeConfig, sample_size: int) -> AutoencoderKL:
    """A fresh AutoencoderKL; len(block_out_channels) levels → downsampling 2^(levels-1), 1 image channel."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
        sample_size=sample_size,
        scaling_factor=cfg.scaling_factor or 1.0,
    )


class VaeTrainer(torch.nn.Module):
    """Wraps the autoencoder so that forward(batch, generator) = (loss, logs) for the training loop."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, batch: dict, generator: torch.Generator):
        x = batch["trg"]
        post = self.vae.encode(x).latent_dist
        z = post.sample(generator=generator)
        rec = self.vae.decode(z).sample
        l1 = F.l1_loss(rec.float(), x.float())
        kl = post.kl().mean() / x[0].numel()  # per-pixel KL, as LDM's kl_weight expects a sum over latents ÷ pixels
        return l1 + self.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


@torch.no_grad()
def estimate_scale(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 32) -> float:
    """1 / std of posterior samples over `images` (LDM's scale_by_std), so latents have unit variance."""
    vae.eval()
    dev = next(vae.parameters()).device
    g = torch.Generator(device=dev).manual_seed(0)
    zs = [vae.encode(images[i : i + batch_size].to(dev)).latent_dist.sample(generator=g).float() for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(zs).flatten().std())


def cheff_vae_config(sample_size: int = 256) -> dict:
    """Cheff's autoencoder geometry: ch 128, ch_mult (1,2,4), 2 res blocks, embed_dim 3, no level attention, RGB."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[128, 256, 512],
        layers_per_block=2,
        latent_channels=3,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=CHEFF_SCALE,
    )


def convert_ldm_state_dict(state: dict, config: dict) -> dict:
    """LDM/Cheff keys (`first_stage_model.*`, `encoder.*`, ...) → diffusers AutoencoderKL keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    keys = [k for k in state if k.startswith("first_stage_model.")]
    if keys:
        state = {k[len("first_stage_model.") :]: v for k, v in state.items() if k in keys}
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # Cheff's LPIPS/discriminator
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError("checkpoint has no 'encoder.*' or 'first_stage_model.encoder.*' keys: not an LDM autoencoder")
    return convert_ldm_vae_checkpoint(state, config)


def import_pretrained(path: str | Path, sample_size: int) -> AutoencoderKL:
    """`vae.pretrained`: a diffusers folder, or a Cheff/LDM checkpoint file (.pt/.ckpt/.safetensors)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vae.pretrained: pretrained autoencoder not found: {path}")
    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(path)
        return vae
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
    config = cheff_vae_config(sample_size)
    vae = AutoencoderKL(**config)
    converted = convert_ldm_state_dict(state, config)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"vae.pretrained: {path} does not match Cheff's autoencoder: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return vae


def encode_gray(vae: AutoencoderKL, x: torch.Tensor):
    """Posterior of 1-channel images in [-1, 1]; RGB autoencoders get the channel repeated (as the paper's RGB PNGs)."""
    if vae.config.in_channels == 3 and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return vae.encode(x).latent_dist


def decode_gray(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    x = vae.decode(z).sample
    return x.mean(1, keepdim=True) if x.shape[1] == 3 else x
