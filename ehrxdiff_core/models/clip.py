"""CXR–EHR CLIP: a transformers `CLIPVisionModel` over the previous image and a tabular transformer
over event embeddings, trained with symmetric InfoNCE and a learnable temperature, as the original EHRXDiff's CLIP.

Faithful: ViT geometry (paper ViT-B/32 @256 = 65 tokens), CLS after ln_post without `visual.proj`,
positional embeddings re-initialised when a pretrained ViT has another size, 2-layer post-LN
`nn.TransformerEncoder` without positional encoding, logit scale init ln(1/0.07) clamped to ±ln 100,
RandomResizedCrop(scale ≥ 0.75, square). Fixed by default: `pooling: masked_mean` (the original sums
padded outputs too, `pooling: paper` keeps that); `enable_nested_tensor=False` so train and eval
compute padded positions the same way (quirk 7). Optional `tab_width` projects events to a narrow
transformer for CPU runs (paper: none, d_model = event dim).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ehrxdiff_core.config import ClipConfig

log = logging.getLogger(__name__)

LOGIT_MAX = math.log(100.0)
# the paper's ViT: OpenAI CLIP ViT-B/32 (width 768, 12 layers, 12 heads), started from OpenAI's weights
PAPER_VIT = {"vision_width": 768, "vision_layers": 12, "vision_heads": 12}
RANDOM_INIT = "random"  # `vision_init` of a ViT that started from random weights (else: the folder it was read from)


def vision_config(cfg: ClipConfig, image_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.vision_width,
        intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=image_size,
        patch_size=cfg.patch_size,
        num_channels=3,
    )


def is_paper_vit(cfg: ClipConfig) -> bool:
    return all(getattr(cfg, k) == v for k, v in PAPER_VIT.items())


def build_vision(cfg: ClipConfig, image_size: int) -> CLIPVisionModel:
    """Fresh ViT, or `clip.pretrained_vision` (positional embeddings re-initialised on a size change).

    A fresh ViT of the paper's geometry is a warning: the paper starts it from OpenAI's CLIP weights, and
    a ViT-B trained from random weights on one contrastive task is a different model.
    """
    if cfg.pretrained_vision is None:
        if is_paper_vit(cfg):
            log.warning(
                "clip.pretrained_vision is unset: the ViT-B/%d (width 768, 12 layers) starts from RANDOM weights; "
                "the paper starts it from OpenAI's CLIP ViT-B/32. Set clip.pretrained_vision to a local "
                "transformers folder of those weights to follow the paper",
                cfg.patch_size,
            )
        else:
            log.info("clip: the ViT starts from random weights (clip.pretrained_vision unset)")
        return CLIPVisionModel(vision_config(cfg, image_size))
    path = Path(cfg.pretrained_vision)
    if not path.exists():
        raise FileNotFoundError(f"clip.pretrained_vision: CLIP vision model folder not found: {path}")
    return CLIPVisionModel.from_pretrained(path, image_size=image_size, ignore_mismatched_sizes=True)


def gray_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B,1,S,S) in [-1,1] → 3 channels; normalisation 0.5/0.5 is the identity on [-1,1] (quirk 11)."""
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize when the ViT's input size (clip.image_size) differs from the image store's."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def random_resized_crop(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Square RandomResizedCrop (area scale in [min_scale, 1]) via an affine grid, drawn from `generator`."""
    b = x.shape[0]
    u = torch.rand(b, 3, generator=generator, device=x.device)
    side = torch.sqrt(min_scale + (1 - min_scale) * u[:, 0])
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, 0, 2] = (2 * u[:, 1] - 1) * (1 - side)
    theta[:, 1, 2] = (2 * u[:, 2] - 1) * (1 - side)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def trim_padding(events: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop padding columns past the batch's longest real row: exact where padded outputs are unused."""
    n = int(mask.sum(1).max().clamp(min=1)) if mask.device.type != "meta" else mask.shape[1]
    return events[:, :n], mask[:, :n]


class TabularEncoder(nn.Module):
    """2-layer transformer over event embeddings (no positions), then Linear → embed_dim per token."""

    def __init__(self, event_dim: int, cfg: ClipConfig):
        super().__init__()
        self.event_dim = event_dim
        width = cfg.tab_width or event_dim
        if width % cfg.tab_heads:
            raise ValueError(
                f"clip.tab_heads ({cfg.tab_heads}) must divide the transformer width {width} "
                "(clip.tab_width or the event dim)"
            )
        self.inp = nn.Linear(event_dim, width) if cfg.tab_width else nn.Identity()
        layer = nn.TransformerEncoderLayer(width, cfg.tab_heads, cfg.tab_ff, dropout=cfg.tab_dropout, batch_first=True)
        if cfg.tab_attention_dropout is not None:  # copied into every layer by TransformerEncoder
            layer.self_attn.dropout = cfg.tab_attention_dropout
        self.encoder = nn.TransformerEncoder(layer, cfg.tab_layers, enable_nested_tensor=False)
        self.proj = nn.Linear(width, cfg.embed_dim)

    def tokens(self, events: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-event outputs (B, L, embed_dim); `mask` True = real. Empty rows attend position 0 (no NaN)."""
        if events.shape[-1] != self.event_dim:  # e.g. a store re-embedded with other text.numeric_features
            raise ValueError(
                f"event vectors are {events.shape[-1]} wide but this model was trained on {self.event_dim}; "
                "re-embed with the same text settings (encoder, text.numeric_features) or retrain"
            )
        keep = mask.clone()
        keep[~keep.any(1), 0] = True
        return self.proj(self.encoder(self.inp(events), src_key_padding_mask=~keep))

    def pooled(self, events: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
        if pooling != "paper":  # padded outputs do not enter the masked mean: skip computing them
            events, mask = trim_padding(events, mask)
        tok = self.tokens(events, mask)
        n = mask.sum(1, keepdim=True).clamp(min=1).to(tok.dtype)
        if pooling == "paper":  # sum over all positions (padding included) ÷ real count
            return tok.sum(1) / n
        return (tok * mask.unsqueeze(-1).to(tok.dtype)).sum(1) / n


class ClipModel(nn.Module):
    """Image and event encoders + the contrastive loss; forward(batch, generator) = (loss, logs)."""

    def __init__(
        self,
        cfg: ClipConfig,
        event_dim: int,
        image_size: int,
        vision: CLIPVisionModel | None = None,
        vision_init: str | None = None,
    ):
        super().__init__()
        self.cfg, self.event_dim, self.image_size = cfg, event_dim, image_size
        self.vision = vision if vision is not None else build_vision(cfg, image_size)
        # where the ViT's weights started: "random" or the clip.pretrained_vision folder (kept through save/load)
        self.vision_init = vision_init or (str(cfg.pretrained_vision) if cfg.pretrained_vision else RANDOM_INIT)
        vw = self.vision.config.hidden_size
        self.vision_proj = nn.Linear(vw, cfg.embed_dim, bias=False) if vw != cfg.embed_dim else nn.Identity()
        self.tab = TabularEncoder(event_dim, cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        img = resize_to(img, self.image_size)
        return self.vision_proj(self.vision(pixel_values=gray_to_rgb(img)).pooler_output)

    def forward(self, batch: dict, generator: torch.Generator):
        img = batch["prev"]
        if self.training and self.cfg.augment_crop_scale is not None and self.cfg.augment_crop_scale < 1:
            img = random_resized_crop(img, self.cfg.augment_crop_scale, generator)
        zi = F.normalize(self.encode_image(img).float(), dim=-1)
        zt = F.normalize(self.tab.pooled(batch["events"], batch["mask"], self.cfg.pooling).float(), dim=-1)
        logits = self.logit_scale.clamp(-LOGIT_MAX, LOGIT_MAX).exp() * zi @ zt.t()
        target = torch.arange(len(zi), device=zi.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        acc = (logits.argmax(1) == target).float().mean()
        return loss, {"acc": acc.detach(), "logit_scale": self.logit_scale.detach()}

    # ------------------------------------------------------------------ persistence (diffusers-like folder)

    def spec(self) -> dict:
        return {
            "clip": self.cfg.model_dump(mode="json"),
            "event_dim": self.event_dim,
            "image_size": self.image_size,
            "vision_init": self.vision_init,
            "vision_config": self.vision.config.to_dict(),
        }

    def save(self, folder: str | Path) -> None:
        """`clip_config.json` + `model.safetensors` (vision, projections, tabular encoder, logit scale)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "clip_config.json").write_text(json.dumps(self.spec(), indent=2))
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors"
        )

    @classmethod
    def from_spec(cls, spec: dict) -> ClipModel:
        cfg = ClipConfig.model_validate({**spec["clip"], "pretrained_vision": None})
        vc = dict(spec["vision_config"])
        vision = CLIPVisionModel(
            CLIPVisionConfig(
                **{k: v for k, v in vc.items() if k not in ("model_type", "transformers_version", "architectures")}
            )
        )
        init = (
            spec.get("vision_init") or spec["clip"].get("pretrained_vision") or RANDOM_INIT
        )  # older folders: from the config
        return cls(cfg, spec["event_dim"], spec["image_size"], vision=vision, vision_init=init)

    @classmethod
    def load(cls, folder: str | Path, key: str = "clip_dir") -> ClipModel:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "clip_config.json").exists():
            raise FileNotFoundError(f"{key}: no trained CLIP model (clip_config.json) in {folder}")
        model = cls.from_spec(json.loads((folder / "clip_config.json").read_text()))
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model
