"""KL autoencoder (diffusers `AutoencoderKL`): build, train loss, scale estimate, Cheff/LDM import.

Training uses reconstruction (L1) + `kl_weight`·KL, and optionally (`vae.discriminator_weight` > 0)
the adversarial half of Cheff's/LDM's autoencoder loss: a patch discriminator with a hinge loss and
LDM's adaptive generator weight. Cheff's LPIPS term needs ImageNet VGG weights that cannot be
downloaded here, so it is not offered. For the paper setting import Cheff's checkpoint
(`vae.pretrained`); its LDM key layout is converted to diffusers' with diffusers' own single-file
conversion helper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ehrxdiff_core.config import VaeConfig
from ehrxdiff_core.safe_load import UnsafePickleError, load_tensors

log = logging.getLogger(__name__)

CHEFF_SCALE = 0.18215  # Stable-Diffusion constant used by Cheff/EHRXDiff (not re-estimated)
CONVERSION_DOC = "README.md, section 'Offline, and weights files that cannot run code'"


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
        scaling_factor=1.0,  # replaced by the estimate from data when training ends (train_vae)
    )


class PatchDiscriminator(torch.nn.Module):
    """pix2pix's PatchGAN, the discriminator of LDM's autoencoder loss: 4×4 convolutions, `layers` of them with
    stride 2, LeakyReLU(0.2), one logit per overlapping patch. GroupNorm replaces BatchNorm so that a patch's
    logit does not depend on the rest of the batch (nor on how DDP splits it)."""

    def __init__(self, in_channels: int = 1, width: int = 64, layers: int = 2):
        super().__init__()
        mods: list[torch.nn.Module] = [torch.nn.Conv2d(in_channels, width, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [
                torch.nn.Conv2d(ch, out, 4, stride, 1, bias=False),
                torch.nn.GroupNorm(min(32, out), out),
                torch.nn.LeakyReLU(0.2),
            ]
            ch = out
        mods.append(torch.nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VaeTrainer(torch.nn.Module):
    """Wraps the autoencoder so that forward(batch, generator) = (loss, logs) for the training loop.

    With `discriminator_weight` > 0 a `PatchDiscriminator` trains beside the autoencoder in the same
    optimiser step: from `batch["step"]` ≥ `discriminator_start` the loss adds the discriminator's hinge
    loss on real images and detached reconstructions (its gradient reaches the discriminator only) and the
    generator term −D(reconstruction), computed with the discriminator's weights detached (its gradient
    reaches the autoencoder only), weighted as in LDM: ‖∇L1‖ / ‖∇generator term‖ at the decoder's last
    layer, times `discriminator_weight`. Before the start both terms are weighted 0.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        kl_weight: float,
        discriminator_weight: float = 0.0,
        discriminator_start: int = 0,
        discriminator_layers: int = 2,
    ):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight
        self.discriminator_weight, self.discriminator_start = discriminator_weight, discriminator_start
        self.discriminator = (
            PatchDiscriminator(vae.config.in_channels, layers=discriminator_layers)
            if discriminator_weight > 0
            else None
        )

    def forward(self, batch: dict, generator: torch.Generator):
        x = batch["trg"]
        post = self.vae.encode(x).latent_dist
        z = post.sample(generator=generator)
        rec = self.vae.decode(z).sample
        l1 = F.l1_loss(rec.float(), x.float())
        kl = post.kl().mean() / x[0].numel()  # per-pixel KL, as LDM's kl_weight expects a sum over latents ÷ pixels
        loss, logs = l1 + self.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}
        if self.discriminator is None:
            return loss, logs
        # before the start both terms are computed and weighted 0, so that every parameter still gets a
        # gradient (DDP expects one) while the decoder-gradient balance below is skipped
        on = float(batch["step"] >= self.discriminator_start)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        g_loss = -torch.func.functional_call(self.discriminator, frozen, (rec,)).float().mean()
        d_loss = 0.5 * (
            F.relu(1.0 - self.discriminator(x).float()).mean()
            + F.relu(1.0 + self.discriminator(rec.detach()).float()).mean()
        )
        weight = self._adaptive_weight(l1, g_loss) * self.discriminator_weight if on else 0.0
        logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), g_weight=weight)
        return loss + weight * g_loss + on * d_loss, logs

    def _adaptive_weight(self, rec_loss: torch.Tensor, g_loss: torch.Tensor) -> float:
        """LDM's balance: the generator term's gradient at the decoder's last layer scaled to the L1 term's."""
        if not torch.is_grad_enabled():
            return 0.0
        last = self.vae.decoder.conv_out.weight
        g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return float((g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4))


@torch.no_grad()
def estimate_scale(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 32) -> float:
    """1 / std of posterior samples over `images` (LDM's scale_by_std), so latents have unit variance."""
    vae.eval()
    dev = next(vae.parameters()).device
    g = torch.Generator(device=dev).manual_seed(0)
    zs = [
        vae.encode(images[i : i + batch_size].to(dev)).latent_dist.sample(generator=g).float()
        for i in range(0, len(images), batch_size)
    ]
    return float(1.0 / torch.cat(zs).flatten().std())


def cheff_vae_config(
    sample_size: int = 256,
    ch: int = 128,
    ch_mult=(1, 2, 4),
    num_res_blocks: int = 2,
    z_channels: int = 3,
    in_channels: int = 3,
) -> dict:
    """diffusers config of an LDM autoencoder; defaults = Cheff (ch 128, ch_mult (1,2,4), 2 res blocks,
    embed_dim 3, RGB)."""
    n = len(ch_mult)
    return dict(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=[ch * m for m in ch_mult],
        layers_per_block=num_res_blocks,
        latent_channels=z_channels,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=CHEFF_SCALE,
    )


def ldm_geometry(state: dict) -> dict:
    """Read ch, ch_mult, res blocks, z and image channels off an LDM autoencoder state dict (no config file needed)."""
    conv_in = state["encoder.conv_in.weight"]
    ch, in_channels = conv_in.shape[0], conv_in.shape[1]
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    blocks = {int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block.")}
    return dict(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=len(blocks),
        z_channels=state["post_quant_conv.weight"].shape[0],
        in_channels=in_channels,
    )


def ldm_autoencoder_keys(state: dict) -> dict:
    """The autoencoder's own keys: unwrap Lightning's `state_dict`, strip `first_stage_model.`, drop `loss.*`."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k[len("first_stage_model.") :]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # Cheff's LPIPS/discriminator
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError("checkpoint has no 'encoder.*' or 'first_stage_model.encoder.*' keys: not an LDM autoencoder")
    return state


def convert_ldm_state_dict(state: dict, config: dict) -> dict:
    """LDM/Cheff keys → diffusers AutoencoderKL keys, with diffusers' own single-file converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(ldm_autoencoder_keys(state), config)


def import_pretrained(path: str | Path, sample_size: int) -> AutoencoderKL:
    """`vae.pretrained`: a diffusers folder, or a Cheff/LDM checkpoint file (.pt/.ckpt/.safetensors).

    A .pt/.ckpt file is read with `weights_only=True`: one that pickles anything but tensors and plain
    values (e.g. a Lightning checkpoint's hyper-parameter objects) is refused, never unpickled.
    """
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
        try:
            state = load_tensors(path)
        except UnsafePickleError as err:
            raise ValueError(
                f"vae.pretrained: {err}. Convert it to .safetensors once, in an environment where you trust the "
                f"file, with the three lines in {CONVERSION_DOC}, and set vae.pretrained to the .safetensors file"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"vae.pretrained: {path} holds a {type(state).__name__}, not a checkpoint dict")
    state = ldm_autoencoder_keys(state)
    try:
        config = cheff_vae_config(sample_size, **ldm_geometry(state))
    except KeyError as err:
        raise ValueError(f"vae.pretrained: {path} is not an LDM/Cheff autoencoder checkpoint (missing {err})") from None
    vae = AutoencoderKL(**config)
    converted = convert_ldm_state_dict(state, config)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"vae.pretrained: {path} does not match an LDM autoencoder: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    log.info("imported LDM autoencoder %s: %s", path, ldm_geometry(state))
    return vae


def encode_gray(vae: AutoencoderKL, x: torch.Tensor):
    """Posterior of 1-channel images in [-1, 1]; RGB autoencoders get the channel repeated (as the paper's RGB PNGs)."""
    if vae.config.in_channels == 3 and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return vae.encode(x).latent_dist


def decode_gray(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    x = vae.decode(z).sample
    return x.mean(1, keepdim=True) if x.shape[1] == 3 else x


def load_vae(vae_dir: str | Path):
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").exists():
        raise FileNotFoundError(f"vae_dir: no autoencoder (config.json) in {vae_dir}; run train_vae first")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.requires_grad_(False).eval()
    return vae
