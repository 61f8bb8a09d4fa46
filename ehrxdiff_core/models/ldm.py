"""Latent diffusion: diffusers `UNet2DConditionModel` + fusion adapter + frozen autoencoder, as the original EHRXDiff.

Faithful: scaled-linear β 0.0015→0.0295 (LDM's "linear" = diffusers `scaled_linear`), T = 1000, ε-prediction
with plain MSE (`prediction_type: v_prediction` is an option), uniform timesteps, target = posterior sample ×
scale, adapter VAE tokens from the unscaled mode latent, CLIP encoders trained jointly, cross-attention-only
conditioning (`crossattn`). Options: `hybrid` (previous latent concatenated → 2·C input channels; scaled by
default, `hybrid_latent_scaled: false` = original's unscaled), w_null augmentation and target affine jitter,
condition dropout (events replaced by the null table) for classifier-free guidance, and `target: residual`
(the U-Net denoises the change from the previous latent; `to_diffused` / `from_diffused`). Choice: EMA covers U-Net
*and* adapter (the original kept EMA of the U-Net only and sampled without it), so sampling with EMA uses a
consistent pair. Demo defaults (the config classes): `hybrid` + `v_prediction` + masked adapter, which learn
the event-driven change within a CPU budget; `configs/paper.yaml`: `crossattn` + ε as the original.
`mask_events` makes the image-only control: the same architecture with every row given the null condition, in
training and in sampling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from ehrxdiff_core.config import LdmConfig
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.vae import encode_gray


def build_unet(cfg: LdmConfig, latent_channels: int, latent_size: int) -> UNet2DConditionModel:
    """U-Net levels = block_out_channels; a level with attention gets cross-attention blocks (down and up)."""
    if len(cfg.attention_levels) != len(cfg.block_out_channels):
        raise ValueError("ldm.attention_levels must have one entry per ldm.block_out_channels level")
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)]
    in_ch = latent_channels * (2 if cfg.conditioning == "hybrid" else 1)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=in_ch,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=list(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.num_heads,  # diffusers' name; it is the number of heads (LDM num_heads)
        norm_num_groups=min(32, min(cfg.block_out_channels)),
        transformer_layers_per_block=1,
    )


def noise_scheduler(cfg: LdmConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="scaled_linear",
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, scale=(0.9, 1.1)) -> torch.Tensor:
    """RandomAffine(±degrees, scale) as the original's w_null target augmentation."""
    b = x.shape[0]
    u = torch.rand(b, 2, generator=generator, device=x.device)
    ang = (2 * u[:, 0] - 1) * math.radians(degrees)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.cos(ang) / s
    theta[:, 0, 1] = -torch.sin(ang) / s
    theta[:, 1, 0] = torch.sin(ang) / s
    theta[:, 1, 1] = torch.cos(ang) / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


class LatentDiffusion(nn.Module):
    """U-Net + adapter (trainable) and the frozen autoencoder; forward(batch, generator) = (loss, logs).

    `mask_events=True` is the image-only control: every row gets the null condition (as CFG's
    unconditional branch), so the parameters are those of the full model but no event reaches them.
    """

    def __init__(
        self,
        cfg: LdmConfig,
        unet: UNet2DConditionModel,
        adapter: FusionAdapter,
        vae: AutoencoderKL,
        train_clip: bool | None = None,
        mask_events: bool = False,
        residual_scale: float = 1.0,
    ):
        super().__init__()
        self.cfg, self.unet, self.adapter, self.vae = cfg, unet, adapter, vae
        self.mask_events = mask_events
        self.residual_scale = float(residual_scale)  # 1 / std of the scaled latent change (`target: residual`)
        self.vae.requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)
        self.scheduler = noise_scheduler(cfg)
        if not (cfg.train_clip if train_clip is None else train_clip):
            for name in ("tab", "vision"):
                if hasattr(adapter, name):
                    getattr(adapter, name).requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode_prev(self, prev: torch.Tensor) -> torch.Tensor:
        return encode_gray(self.vae, prev).mode()

    def to_diffused(self, z_trg: torch.Tensor, prev_mode: torch.Tensor) -> torch.Tensor:
        """The scaled target latent → what the U-Net denoises: itself (`target: image`) or its change from
        the previous image's latent, divided by the change's std on the training pairs (`target: residual`)."""
        if self.cfg.target == "image":
            return z_trg
        return (z_trg - prev_mode * self.scale) * self.residual_scale

    def from_diffused(self, z: torch.Tensor, prev_mode: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_diffused`, unscaled for the decoder: the latent the autoencoder decodes."""
        if self.cfg.target == "image":
            return z / self.scale
        return prev_mode + z / (self.residual_scale * self.scale)

    @torch.no_grad()
    def fit_residual_scale(self, batches) -> float:
        """Set `residual_scale` = 1 / std of the scaled latent change (target mode − previous mode) over
        `batches` (dicts with `prev` and `trg`), as LDM scales its latents by their std (`estimate_scale`);
        returns it."""
        changes = [
            (encode_gray(self.vae, b["trg"]).mode() - self.encode_prev(b["prev"])).double().flatten() * self.scale
            for b in batches
        ]
        if not changes:
            raise ValueError("ldm.target: residual needs training pairs to measure the latent change's std")
        std = float(torch.cat(changes).std(correction=0))
        if std < 1e-6:
            raise ValueError(
                "ldm.target: residual: the previous and target latents of the training pairs are identical "
                "(no change to learn); use ldm.target: image"
            )
        self.residual_scale = 1.0 / std
        return self.residual_scale

    def condition(self, batch: dict, prev_mode: torch.Tensor, null: torch.Tensor):
        """(context, attention mask or None, concat latent or None) for a batch; `null` rows get the null table."""
        if self.mask_events:  # image-only control: every row, whatever the batch or the caller says
            null = torch.ones_like(null)
        events, mask = batch.get("events"), batch.get("mask")
        if events is not None and null.any():
            events = events.masked_fill(null[:, None, None], 0.0)
            mask = mask & ~null[:, None]
        ctx, attn = self.adapter(batch["prev"], prev_mode, events, mask, null)
        concat = None
        if self.cfg.conditioning == "hybrid":
            concat = prev_mode * (self.scale if self.cfg.hybrid_latent_scaled else 1.0)
        return ctx, attn, concat

    def eps(self, z_t: torch.Tensor, t: torch.Tensor, ctx, attn, concat) -> torch.Tensor:
        """The U-Net output: ε (paper) or v, per `ldm.prediction_type`; the schedulers are told which."""
        x = torch.cat([z_t, concat.to(z_t.dtype)], dim=1) if concat is not None else z_t
        return self.unet(x, t, encoder_hidden_states=ctx, encoder_attention_mask=attn).sample

    def forward(self, batch: dict, generator: torch.Generator):
        trg = batch["trg"]
        if self.training and self.cfg.target_affine:
            trg = random_affine(trg, generator)
        with torch.no_grad():
            z0 = encode_gray(self.vae, trg).sample(generator=generator) * self.scale
            prev_mode = self.encode_prev(batch["prev"])
        b = z0.shape[0]
        null = batch["null"].clone()
        if self.training and self.cfg.cond_dropout > 0:
            null |= torch.rand(b, generator=generator, device=z0.device) < self.cfg.cond_dropout
        ctx, attn, concat = self.condition(batch, prev_mode, null)
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        z0 = self.to_diffused(z0, prev_mode)
        z_t = self.scheduler.add_noise(z0, noise, t)
        target = noise if self.cfg.prediction_type == "epsilon" else self.scheduler.get_velocity(z0, noise, t)
        loss = F.mse_loss(self.eps(z_t, t, ctx, attn, concat).float(), target.float())
        return loss, {}

    # ------------------------------------------------------------------ persistence

    @property
    def config(self) -> dict:
        """Everything `load_ldm` needs to rebuild this model, read from the model itself (as a diffusers
        model's config is its constructor's arguments): saved as `ldm_config.json`."""
        _, h, _ = self.adapter.latent_shape
        return {
            "ldm": self.cfg.model_dump(mode="json"),
            "clip_spec": self.adapter.clip_spec,
            "latent_shape": list(self.adapter.latent_shape),
            "max_events": self.adapter.max_events,
            "image_size": h * 2 ** (len(self.vae.config.block_out_channels) - 1),
            "scaling_factor": self.scale,
            "mask_events": self.mask_events,
            "residual_scale": self.residual_scale,
        }

    def save(self, folder: str | Path) -> None:
        """`unet/` (diffusers) + `adapter/model.safetensors` + `ldm_config.json` (`config`: everything to rebuild)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        (folder / "adapter").mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()},
            folder / "adapter" / "model.safetensors",
        )
        (folder / "ldm_config.json").write_text(json.dumps(self.config, indent=2))


def load_ldm(ldm_dir: str | Path, vae: AutoencoderKL, use_ema: bool) -> LatentDiffusion:
    """Rebuild the trained model from `ldm_dir`; `use_ema` takes `unet_ema/` + `adapter_ema/` when present.
    A model trained image-only (spec `mask_events`) comes back masking every event, so it is never sampled with them."""
    from safetensors.torch import load_file

    ldm_dir = Path(ldm_dir)
    spec_path = ldm_dir / "ldm_config.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"ldm_dir: no trained latent diffusion model (ldm_config.json) in {ldm_dir}")
    spec = json.loads(spec_path.read_text())
    cfg = LdmConfig.model_validate(spec["ldm"])
    clip = ClipModel.from_spec(spec["clip_spec"])
    adapter = FusionAdapter(cfg.adapter, clip, tuple(spec["latent_shape"]), cfg.cross_attention_dim, spec["max_events"])
    suffix = "_ema" if use_ema and (ldm_dir / "unet_ema").exists() else ""
    if use_ema and not suffix:
        raise FileNotFoundError(f"sample.use_ema: {ldm_dir} has no EMA weights (unet_ema/); set sample.use_ema: false")
    unet = UNet2DConditionModel.from_pretrained(ldm_dir / f"unet{suffix}")
    adapter.load_state_dict(load_file(ldm_dir / f"adapter{suffix}" / "model.safetensors"))
    model = LatentDiffusion(
        cfg,
        unet,
        adapter,
        vae,
        mask_events=bool(spec.get("mask_events", False)),
        residual_scale=float(spec.get("residual_scale", 1.0)),
    )
    model.eval()
    return model
