"""Fusion adapter: event tokens + previous-image ViT tokens + per-channel VAE tokens → U-Net context.

`mode: paper` (the original's fusion): tokens concatenated (max_events + ViT tokens + latent channels) and
mixed by a Linear over the token axis to `context_tokens`; padded events are real inputs to that
linear (as the original), null/no-event samples are all-zero tables with no padding. `mode: masked`:
no token-axis linear; tokens are concatenated and padded events are hidden from cross-attention
by an attention mask, so any number of events works (padding past a batch's longest row is not
computed at all; the demo default). `use_ehr/use_vit/use_vae` switch the branches
off for ablations (use_ehr: false removes the branch and its parameters; the image-only control
keeps the branch and gives every row the null table, see `LatentDiffusion.mask_events`). A batch
without events (`events=None`, every row null) gets the null table built here. ViT tokens: all
tokens after the encoder, without ln_post (as the original); VAE tokens: posterior mode, unscaled (as the original).
"""

from __future__ import annotations

import torch
from torch import nn

from ehrxdiff_core.config import AdapterConfig
from ehrxdiff_core.models.clip import ClipModel, gray_to_rgb, resize_to, trim_padding


class FusionAdapter(nn.Module):
    def __init__(
        self, cfg: AdapterConfig, clip: ClipModel, latent_shape: tuple[int, int, int], context_dim: int, max_events: int
    ):
        super().__init__()
        if not (cfg.use_ehr or cfg.use_vit or cfg.use_vae):
            raise ValueError("ldm.adapter: at least one of use_ehr, use_vit, use_vae must be true")
        self.cfg, self.max_events = cfg, max_events
        self.latent_shape, self.context_dim = tuple(latent_shape), context_dim
        self.clip_spec = clip.spec()  # what rebuilds the CLIP encoders this adapter holds
        c, h, w = latent_shape
        n_tokens = 0
        if cfg.use_ehr:
            self.event_dim = clip.event_dim
            self.tab = clip.tab
            self.ehr_proj = _proj(clip.cfg.embed_dim, context_dim)
            n_tokens += max_events
        if cfg.use_vit:
            self.vision = clip.vision
            self.vision.post_layernorm.requires_grad_(
                False
            )  # unused here (no ln_post); DDP needs every trainable param used
            vc = clip.vision.config
            self.vit_proj = _proj(vc.hidden_size, context_dim)
            n_tokens += (vc.image_size // vc.patch_size) ** 2 + 1
        if cfg.use_vae:
            self.vae_proj = nn.Linear(h * w, context_dim)
            n_tokens += c
        self.n_tokens = n_tokens
        self.context_tokens = cfg.context_tokens or max_events
        self.fuse = nn.Linear(n_tokens, self.context_tokens) if cfg.mode == "paper" else None

    @property
    def out_tokens(self) -> int:
        return self.context_tokens if self.cfg.mode == "paper" else self.n_tokens

    def forward(
        self,
        prev: torch.Tensor,
        prev_mode: torch.Tensor,
        events: torch.Tensor | None,
        mask: torch.Tensor | None,
        null: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context (B, T, D) and a cross-attention mask (B, T) (True = attend) in masked mode, else None."""
        parts, masks = [], []
        b = prev.shape[0]
        if self.cfg.use_ehr:
            events, mask = self._event_table(events, mask, null, b, prev.device)
            if self.cfg.mode == "paper":
                mask[null] = True  # the original's null table: zeros, no padding → zeros are attended
            else:  # masked: padded events are hidden from cross-attention, so they need not be computed
                events, mask = trim_padding(events, mask)
            parts.append(self.ehr_proj(self.tab.tokens(events, mask)))
            masks.append(mask)
        if self.cfg.use_vit:
            tok = self.vision(
                pixel_values=gray_to_rgb(resize_to(prev, self.vision.config.image_size))
            ).last_hidden_state
            parts.append(self.vit_proj(tok))
            masks.append(torch.ones(b, tok.shape[1], dtype=torch.bool, device=prev.device))
        if self.cfg.use_vae:
            parts.append(self.vae_proj(prev_mode.flatten(2).to(self.vae_proj.weight.dtype)))
            masks.append(torch.ones(b, prev_mode.shape[1], dtype=torch.bool, device=prev.device))
        ctx = torch.cat(parts, dim=1)
        if self.fuse is not None:
            return self.fuse(ctx.transpose(1, 2)).transpose(1, 2), None
        attn = torch.cat(masks, dim=1)
        attn[~attn.any(1), 0] = True  # a row with nothing to attend (EHR-only, no events) sees one zero token
        return ctx, attn

    def _event_table(
        self, events: torch.Tensor | None, mask: torch.Tensor | None, null: torch.Tensor, b: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Events and a fresh mask of the shape each mode needs: `paper`'s token-axis linear wants exactly
        max_events columns, `masked` at least one (the encoders need a position to attend)."""
        if events is None:  # an image-only batch: no embeddings were read, every row is null
            if not bool(null.all()):
                raise ValueError("FusionAdapter: event embeddings are missing for rows that are not null")
            events = torch.zeros(b, 0, self.event_dim, device=device)
            mask = torch.zeros(b, 0, dtype=torch.bool, device=device)
        width = self.max_events if self.cfg.mode == "paper" else max(1, events.shape[1])
        if (
            events.shape[1] < width
        ):  # zero events padded, hidden by the mask (paper: null rows see zeros, as the original)
            pad = width - events.shape[1]
            events = torch.cat([events, events.new_zeros(b, pad, events.shape[2])], dim=1)
            mask = torch.cat([mask, mask.new_zeros(b, pad)], dim=1)
        return events, mask.clone()


def _proj(d_in: int, d_out: int) -> nn.Module:
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out)
