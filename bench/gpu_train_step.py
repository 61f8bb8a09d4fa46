"""The paper-config LDM training step on one GPU, as `train_ldm` runs it: the two frozen autoencoder
encodes (target and previous image, Cheff's geometry), the fusion adapter (ViT + event encoder, trained
jointly) and the U-Net, then backward and AdamW. Prints one table: for each batch size (8, 32, 64),
precision (fp32, TF32, bf16 autocast, bf16 + channels-last, + torch.compile) and gradient checkpointing
of the U-Net (on as in configs/paper.yaml, and off): step time, images/s, peak memory, achieved TFLOP/s
and MFU against the dense peak of *that* precision.

FLOPs are model FLOPs, counted once with FlopCounterMode at batch 1 without checkpointing (forward +
backward of the adapter and U-Net, forward of the two encodes), so checkpointing's recomputation shows
as a lower MFU instead of counting as work. The header gives the encodes' share.

Dense peaks in TFLOP/s, picked by the GPU's name (override with --peak-fp32/--peak-tf32/--peak-bf16):

    GPU               fp32   TF32   bf16
    H100 SXM, H200    67     495    989
    H100 NVL          60     418    835
    H100 PCIe         51     378    756
    A100              19.5   156    312
    L40S              91.6   183    362
    A10               31.2   62.5   125

    python bench/gpu_train_step.py                  # GPU; rows not started within --budget-s (540 s):
                                                    # listed as skipped
    python bench/gpu_train_step.py --no-compile     # skip the torch.compile rows
    python bench/gpu_train_step.py --smoke          # tiny config on CPU, 1 timed step per row (checks the script)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import yaml

from ehrxdiff_core.config import load_config
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.train_ldm import build_latent_diffusion
from ehrxdiff_core.models.training import trainable_params
from ehrxdiff_core.models.vae import cheff_vae_config, encode_gray

ROOT = Path(__file__).resolve().parents[1]
# dense TFLOP/s (fp32, TF32, bf16); the first name contained in the device name wins, so longer names come first
PEAKS = [
    ("H100 PCIe", (51.0, 378.0, 756.0)),
    ("H100 NVL", (60.0, 418.0, 835.0)),
    ("H100", (67.0, 495.0, 989.0)),
    ("H200", (67.0, 495.0, 989.0)),
    ("A100", (19.5, 156.0, 312.0)),
    ("L40S", (91.6, 183.0, 362.0)),
    ("A10", (31.2, 62.5, 125.0)),
]
# (label, precision, channels_last, compile), in the order they run (the time budget skips the last ones)
VARIANTS = [
    ("bf16", "bf16", False, False),
    ("tf32", "tf32", False, False),
    ("fp32", "fp32", False, False),
    ("bf16+cl", "bf16", True, False),
    ("bf16+cl+compile", "bf16", True, True),
]


def known_peaks(name: str) -> dict[str, float | None]:
    for key, (fp32, tf32, bf16) in PEAKS:
        if key in name:
            return {"fp32": fp32 * 1e12, "tf32": tf32 * 1e12, "bf16": bf16 * 1e12}
    return {"fp32": None, "tf32": None, "bf16": None}


def paper_config(smoke: bool):
    """configs/paper.yaml (its weights paths are not read); --smoke shrinks every model to CPU size."""
    raw = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    image_size, max_events = 256, 1024
    if smoke:
        raw["clip"].update(
            image_size=32,
            patch_size=8,
            vision_width=32,
            vision_layers=1,
            vision_heads=2,
            tab_width=32,
            tab_heads=2,
            tab_ff=64,
            embed_dim=32,
        )
        raw["ldm"].update(
            block_out_channels=[32, 32],
            attention_levels=[False, True],
            layers_per_block=1,
            num_heads=2,
            cross_attention_dim=32,
        )
        raw["ldm"]["adapter"]["context_tokens"] = 16
        image_size, max_events = 32, 16
    cfg = load_config({**raw, "events": {"max_events": max_events}, "images": {"size": image_size}}, check_paths=False)
    return cfg, image_size, max_events


def build_model(cfg, image_size: int, max_events: int, event_dim: int, smoke: bool):
    """The model `train_ldm` trains: Cheff's autoencoder geometry (random weights: speed does not depend on them)."""
    from diffusers import AutoencoderKL

    vae_cfg = (
        cheff_vae_config(image_size, ch=32, ch_mult=(1, 1, 1), num_res_blocks=1)
        if smoke
        else cheff_vae_config(image_size)
    )
    vae = AutoencoderKL(**vae_cfg)
    clip = ClipModel(cfg.clip, event_dim, image_size)
    model = build_latent_diffusion(cfg.ldm, vae, clip, image_size, max_events)
    return model


def make_batch(n: int, image_size: int, max_events: int, dim: int, dev: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    b = {
        "prev": torch.rand(n, 1, image_size, image_size, generator=g) * 2 - 1,
        "trg": torch.rand(n, 1, image_size, image_size, generator=g) * 2 - 1,
        "events": torch.randn(n, max_events, dim, generator=g),
        "mask": (torch.arange(max_events) < max_events * 3 // 4).expand(n, -1).clone(),
        "null": torch.zeros(n, dtype=torch.bool),
    }
    return {k: v.to(dev) for k, v in b.items()}


def count_flops(model, image_size: int, max_events: int, dim: int, dev: torch.device) -> tuple[float, float]:
    """(model FLOPs of one training image, of which the two encodes) at batch 1, without checkpointing."""
    from torch.utils.flop_counter import FlopCounterMode

    b1 = make_batch(1, image_size, max_events, dim, dev)
    with FlopCounterMode(display=False) as fc:
        loss, _ = model(b1, torch.Generator(device=dev).manual_seed(0))
        loss.backward()
    total = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        encode_gray(model.vae, b1["trg"]).sample()
        encode_gray(model.vae, b1["prev"]).mode()
    model.zero_grad(set_to_none=True)
    return float(total), float(fc.get_total_flops())


def set_precision(precision: str, cuda: bool) -> None:
    """fp32 means IEEE fp32 matmuls and convolutions; TF32 and bf16 rows allow TF32, as training does."""
    if cuda:
        tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def time_row(model, opt, batch, precision: str, compiled: bool, dev: torch.device, warmup: int, steps: int) -> float:
    """Seconds per optimizer step (mean of `steps`, after `warmup` untimed steps)."""
    cuda = dev.type == "cuda"
    run = torch.compile(model) if compiled else model
    gen = torch.Generator(device=dev).manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = run(batch, gen)
        loss.backward()
        opt.step()

    for _ in range(warmup + (2 if compiled else 0)):  # compilation happens in the first steps
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / steps


def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny config on CPU, batches 1 and 2, 1 timed step per row")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 8 32 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 5; smoke 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps before each row (default 2; smoke 1)")
    ap.add_argument(
        "--checkpointing", choices=["both", "on", "off"], default="both", help="U-Net gradient checkpointing rows"
    )
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument(
        "--budget-s", type=float, default=540, help="rows not started after this many seconds are reported as skipped"
    )
    ap.add_argument("--event-dim", type=int, default=1536, help="event vector width (ada-002: 1536; smoke: 16)")
    for p in ("fp32", "tf32", "bf16"):
        ap.add_argument(
            f"--peak-{p}",
            type=float,
            default=None,
            help=f"dense {p} peak in TFLOP/s (default: by GPU name, table above)",
        )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    cfg, image_size, max_events = paper_config(args.smoke)
    dim = 16 if args.smoke else args.event_dim
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    peaks = known_peaks(name) if cuda else {"fp32": None, "tf32": None, "bf16": None}
    for p in peaks:
        if getattr(args, f"peak_{p}") is not None:
            peaks[p] = getattr(args, f"peak_{p}") * 1e12
    batches = args.batches or ([1, 2] if args.smoke else [8, 32, 64])
    steps = args.steps or (1 if args.smoke else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    ckpt_rows = {"both": [True, False], "on": [True], "off": [False]}[args.checkpointing]
    variants = [v for v in VARIANTS if not (v[3] and (args.no_compile or args.smoke))]

    torch.manual_seed(0)
    model = build_model(cfg, image_size, max_events, dim, args.smoke).to(dev)
    model.train()
    params = trainable_params(model)
    opt = torch.optim.AdamW(params, lr=5e-5, fused=cuda)
    set_precision("fp32", cuda)
    flops, vae_flops = count_flops(model, image_size, max_events, dim, dev)
    n_unet = sum(p.numel() for p in model.unet.parameters())
    n_adapter = sum(p.numel() for p in model.adapter.parameters())
    n_vae = sum(p.numel() for p in model.vae.parameters())
    print(
        f"device: {name}; torch {torch.__version__}; dense peaks TFLOP/s: "
        + ", ".join(f"{p} {fmt(v / 1e12 if v else None, '.3g')}" for p, v in peaks.items())
    )
    print(
        f"{'smoke' if args.smoke else 'paper'} config, {image_size} px, {max_events} events × "
        f"{dim}: U-Net {n_unet / 1e6:.1f} M, "
        f"adapter {n_adapter / 1e6:.1f} M (trained), autoencoder {n_vae / 1e6:.1f} M (frozen)"
    )
    print(
        f"model FLOPs per training image: {flops / 1e9:.1f} GFLOP, of which the two autoencoder encodes "
        f"{vae_flops / 1e9:.1f} GFLOP ({vae_flops / flops:.0%}; "
        f"+{vae_flops / (flops - vae_flops):.0%} over adapter + U-Net)"
    )
    print(f"{warmup} warm-up + {steps} timed steps per row", flush=True)

    rows = []
    for label, precision, channels_last, compiled in variants:
        for ckpt in ckpt_rows:
            for bs in batches:
                row = {
                    "batch": bs,
                    "variant": label,
                    "ckpt": "on" if ckpt else "off",
                    "ms": None,
                    "img_s": None,
                    "gib": None,
                    "tflops": None,
                    "peak": peaks[precision],
                    "mfu": None,
                    "note": "",
                }
                rows.append(row)
                if time.perf_counter() - t_start > args.budget_s:
                    row["note"] = "skipped (time budget)"
                    continue
                print(f"  batch {bs} {label} checkpointing {row['ckpt']} ...", file=sys.stderr, flush=True)
                set_precision(precision, cuda)
                model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                if ckpt:
                    model.unet.enable_gradient_checkpointing()
                else:
                    model.unet.disable_gradient_checkpointing()
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                try:
                    dt = time_row(
                        model,
                        opt,
                        make_batch(bs, image_size, max_events, dim, dev),
                        precision,
                        compiled,
                        dev,
                        warmup,
                        steps,
                    )
                except torch.OutOfMemoryError:
                    row["note"] = "out of memory"
                except Exception as err:  # e.g. a compile failure: report it, keep the other rows
                    row["note"] = f"failed: {type(err).__name__}: {str(err)[:120]}"
                else:
                    achieved = flops * bs / dt
                    row.update(
                        ms=dt * 1e3,
                        img_s=bs / dt,
                        tflops=achieved / 1e12,
                        gib=torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
                        mfu=achieved / peaks[precision] if peaks[precision] else None,
                    )
                opt.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.empty_cache()

    print(
        f"{'batch':>5}  {'variant':<16} {'ckpt':<4} {'step ms':>9} {'img/s':>8} {'peak GiB':>8} "
        f"{'TFLOP/s':>8} {'peak':>6} {'MFU':>6}"
    )
    for r in sorted(rows, key=lambda r: (r["batch"], [v[0] for v in variants].index(r["variant"]), r["ckpt"] == "off")):
        line = (
            f"{r['batch']:>5}  {r['variant']:<16} {r['ckpt']:<4} {fmt(r['ms'], '9.1f'):>9} "
            f"{fmt(r['img_s'], '8.2f'):>8} "
            f"{fmt(r['gib'], '8.2f'):>8} {fmt(r['tflops'], '8.3g'):>8} "
            f"{fmt(r['peak'] / 1e12 if r['peak'] else None, '6.3g'):>6} "
            f"{fmt(r['mfu'], '6.1%'):>6}"
        )
        print(line + (f"  {r['note']}" if r["note"] else ""))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
