"""Training loop of the evaluator: masked multi-task loss, light augmentation, AdamW + cosine schedule.

Kept self-contained (one visible loop) so the evaluation stage does not depend on the generator's trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ehrxdiff_core.config import TrainLoop
from ehrxdiff_core.evaluation.evaluator import EvaluatorNet, to_input


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random rotation/scale/shift and brightness/contrast jitter; no flips (laterality matters in CXR)."""
    b = x.shape[0]
    r = lambda lo, hi: torch.rand(b, generator=generator).mul(hi - lo).add(lo).to(x.device)  # noqa: E731
    angle, scale = r(-0.09, 0.09), r(0.93, 1.07)  # ±5 degrees, ±7 %
    tx, ty = r(-0.06, 0.06), r(-0.06, 0.06)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast, brightness = r(0.9, 1.1).view(b, 1, 1, 1), r(-0.1, 0.1).view(b, 1, 1, 1)
    return (x * contrast + brightness).clamp(-1, 1)


def masked_losses(out: dict[str, torch.Tensor], findings, male, age_z) -> dict[str, torch.Tensor]:
    """BCE on observed findings and sex, MSE on standardised age; NaN targets (uncertain/blank) masked out."""

    def masked(loss_fn, pred, target):
        mask = ~torch.isnan(target)
        if not mask.any():
            return pred.sum() * 0.0
        return loss_fn(pred[mask], target[mask])

    return {
        "loss_findings": masked(F.binary_cross_entropy_with_logits, out["findings"].float(), findings),
        "loss_sex": masked(F.binary_cross_entropy_with_logits, out["sex"].float(), male),
        "loss_age": masked(F.mse_loss, out["age"].float(), age_z),
    }


def lr_at(step: int, cfg: TrainLoop) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_loop(
    model: EvaluatorNet,
    load_batch: Callable[[np.ndarray], np.ndarray],
    targets: dict[str, np.ndarray],
    cfg: TrainLoop,
    device: str,
    use_augment: bool = True,
) -> list[dict]:
    """Train in place for `cfg.steps` optimiser steps; returns one log row per `cfg.log_every` steps."""
    n = len(targets["male"])
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    autocast = torch.device(device).type == "cuda" and cfg.bf16
    tgt = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in targets.items()}
    history, window = [], []
    for step in tqdm(range(cfg.steps), desc="train evaluator", mininterval=10):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        for _ in range(cfg.grad_accum):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=gen).numpy()
            x = to_input(load_batch(idx), device)
            if use_augment:
                x = augment(x, gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            losses = masked_losses(out, *(tgt[k][idx].to(device) for k in ("findings", "male", "age_z")))
            loss = sum(losses.values())
            (loss / cfg.grad_accum).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {
                "step": step + 1,
                **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                "lr": lr_at(step, cfg),
            }
            history.append(row)
            window = []
    model.eval()
    return history
