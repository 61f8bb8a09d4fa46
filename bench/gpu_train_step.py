"""Paper-config U-Net + fusion adapter training step on one GPU: step time, images/s, peak memory
and MFU against the card's dense bf16 peak, at batch 8 and 32, fp32 vs bf16 (+ channels-last,
+ torch.compile). Latents are random (the frozen VAE is not part of the timed step).

    python bench/gpu_train_step.py            # GPU, about 5 minutes on one H100
    python bench/gpu_train_step.py --smoke    # tiny config on CPU (checks the script)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from ehrxdiff_core.config import load_config
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.ldm import build_unet, noise_scheduler

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(name: str) -> float | None:
    for key, v in PEAK_BF16.items():
        if key in name:
            return v
    return None


class UnetAdapterStep(torch.nn.Module):
    """The trainable part of the LDM step: adapter → context, noised latent → U-Net → ε-MSE."""

    def __init__(self, cfg, event_dim: int, image_size: int, latent: int, max_events: int):
        super().__init__()
        clip = ClipModel(cfg.clip, event_dim, image_size)
        self.adapter = FusionAdapter(cfg.ldm.adapter, clip, (3, latent, latent), cfg.ldm.cross_attention_dim, max_events)
        self.unet = build_unet(cfg.ldm, 3, latent)
        self.sched = noise_scheduler(cfg.ldm)

    def forward(self, b):
        ctx, attn = self.adapter(b["prev"], b["prev_mode"], b["events"], b["mask"], b["null"])
        z_t = self.sched.add_noise(b["z0"], b["noise"], b["t"])
        eps = self.unet(z_t, b["t"], encoder_hidden_states=ctx, encoder_attention_mask=attn).sample
        return F.mse_loss(eps.float(), b["noise"].float())


def make_batch(n, image_size, latent, max_events, dim, dev):
    g = torch.Generator(device="cpu").manual_seed(0)
    b = {"prev": torch.rand(n, 1, image_size, image_size, generator=g) * 2 - 1, "prev_mode": torch.randn(n, 3, latent, latent, generator=g),
         "events": torch.randn(n, max_events, dim, generator=g), "mask": torch.arange(max_events).expand(n, -1) < max_events * 3 // 4,
         "null": torch.zeros(n, dtype=torch.bool), "z0": torch.randn(n, 3, latent, latent, generator=g),
         "noise": torch.randn(n, 3, latent, latent, generator=g), "t": torch.randint(0, 1000, (n,), generator=g)}
    return {k: v.to(dev) for k, v in b.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny config on CPU")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budget-s", type=float, default=330, help="skip remaining variants after this many seconds")
    ap.add_argument("--event-dim", type=int, default=1536)
    args = ap.parse_args()
    t_start = time.perf_counter()
    raw = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    image_size, max_events, dim = 256, 1024, args.event_dim
    if args.smoke:
        raw["clip"].update(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, tab_width=32, tab_heads=2,
                           tab_ff=64, embed_dim=32)
        raw["ldm"].update(block_out_channels=[32, 32], attention_levels=[False, True], layers_per_block=1, num_heads=2, cross_attention_dim=32)
        raw["ldm"]["adapter"]["context_tokens"] = 16
        image_size, max_events, dim = 32, 16, 16
    cfg = load_config({**raw, "events": {"max_events": max_events}, "images": {"size": image_size}}, check_paths=False)
    latent = image_size // 4
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 rows use autocast
        torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    peak = peak_flops(name) if cuda else None
    batches = args.batches or ([2, 4] if args.smoke else [8, 32])
    steps = args.steps or (2 if args.smoke else 6)
    print(f"device: {name}; bf16 dense peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s; torch {torch.__version__}")

    torch.manual_seed(0)
    model = UnetAdapterStep(cfg, dim, image_size, latent, max_events).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"U-Net {sum(p.numel() for p in model.unet.parameters()) / 1e6:.1f} M + adapter {sum(p.numel() for p in model.adapter.parameters()) / 1e6:.1f} M params; "
          f"gradient checkpointing {cfg.ldm.train.gradient_checkpointing}")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=cuda)

    from torch.utils.flop_counter import FlopCounterMode

    b1 = make_batch(1, image_size, latent, max_events, dim, dev)
    with FlopCounterMode(display=False) as fc:
        model(b1).backward()
    flops_per_image = fc.get_total_flops()  # model FLOPs: counted before checkpointing adds recomputation
    opt.zero_grad(set_to_none=True)
    if cfg.ldm.train.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    print(f"FLOPs per image (fwd+bwd, FlopCounterMode): {flops_per_image / 1e9:.1f} GFLOP")

    variants = [("fp32", False, False, False), ("bf16", True, False, False), ("bf16+cl", True, True, False)]
    if not args.no_compile and not args.smoke:
        variants.append(("bf16+cl+compile", True, True, True))
    print(f"{'batch':>5} {'variant':<16} {'step ms':>9} {'img/s':>8} {'peak GiB':>9} {'MFU':>6}")
    for bs in batches:
        batch = make_batch(bs, image_size, latent, max_events, dim, dev)
        for label, bf16, cl, comp in variants:
            if time.perf_counter() - t_start > args.budget_s:
                print(f"{bs:>5} {label:<16} skipped (time budget)")
                continue
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            run = torch.compile(model) if comp else model
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = run(batch)
                loss.backward()
                opt.step()

            try:
                for _ in range(2 if not comp else 3):  # warm-up (and compilation)
                    step()
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                if cuda:
                    torch.cuda.synchronize(dev)
                dt = (time.perf_counter() - t0) / steps
            except torch.OutOfMemoryError:
                print(f"{bs:>5} {label:<16} out of memory")
                opt.zero_grad(set_to_none=True)
                continue
            except Exception as err:  # e.g. a compile failure: report it, keep the other rows
                print(f"{bs:>5} {label:<16} failed: {type(err).__name__}: {str(err)[:200]}")
                opt.zero_grad(set_to_none=True)
                continue
            mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
            mfu = flops_per_image * bs / dt / peak if peak else float("nan")
            print(f"{bs:>5} {label:<16} {dt * 1e3:9.1f} {bs / dt:8.2f} {mem:9.2f} {mfu:6.1%}", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s; params {n_params / 1e6:.1f} M")


if __name__ == "__main__":
    main()
