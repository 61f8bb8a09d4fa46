"""CPU figures for the demo model config: train steps/s and images/s (VAE, CLIP, LDM) and sampling
seconds/image for DDIM-100 vs DPM-Solver++ at 20/25 steps, on a toy world at images.size = 64.

    python bench/models_cpu.py [--threads 2] [--steps 10] [--full]

`--full` also trains every stage with the demo defaults end to end and reports whether the
sampled images follow the events (toy world: blob brightness of sample vs target vs previous).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy fixtures of the tests

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ehrxdiff_core.config import ClipConfig, LdmConfig, SampleConfig, VaeConfig
from ehrxdiff_core.models.sample import sample
from ehrxdiff_core.models.train_clip import train_clip
from ehrxdiff_core.models.train_ldm import train_ldm
from ehrxdiff_core.models.train_vae import train_vae
from toy_world import write_world


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def blob(img: np.ndarray) -> float:
    """Mean brightness of the toy opacity region (lower right) minus a reference region."""
    s = img.shape[0]
    a = img[int(0.6 * s) : int(0.76 * s), int(0.6 * s) : int(0.76 * s)].mean()
    b = img[int(0.6 * s) : int(0.76 * s), int(0.24 * s) : int(0.4 * s)].mean()
    return float(a - b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per stage")
    ap.add_argument("--pairs", type=int, default=240)
    ap.add_argument("--max-events", type=int, default=64)
    ap.add_argument("--dim", type=int, default=384, help="event embedding dim (minilm: 384)")
    ap.add_argument("--full", action="store_true", help="train the demo defaults fully and check event use")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="models_cpu_"))
    w = write_world(root, n_pairs=args.pairs, size=64, dim=args.dim, max_len=min(40, args.max_events))
    vae, clip, ldm = VaeConfig(), ClipConfig(), LdmConfig()
    if not args.full:
        for c in (vae, clip, ldm):
            c.train.steps = args.steps
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.pairs} pairs, 64 px, max_events "
        f"{args.max_events}, dim {args.dim}"
    )
    rows = []
    info, s = timed(lambda: train_vae(w["images"], w["triplets"], vae, root / "vae"))
    rows.append(("vae", vae.train, s, info))
    info, s = timed(
        lambda: train_clip(w["images"], w["embeddings"], w["triplets"], clip, args.max_events, root / "clip")
    )
    rows.append(("clip", clip.train, s, info))
    info, s = timed(
        lambda: train_ldm(
            w["images"], w["embeddings"], w["triplets"], root / "vae", root / "clip", ldm, args.max_events, root / "ldm"
        )
    )
    rows.append(("ldm", ldm.train, s, info))
    for name, loop, s, info in rows:
        per_step = pd.read_csv(root / name / "metrics.csv")["seconds"].median()
        print(
            f"train {name:4s}: {1 / per_step:6.2f} steps/s, "
            f"{loop.batch_size * loop.grad_accum / per_step:7.1f} images/s "
            f"(batch {loop.batch_size}); {loop.steps} steps took {s:.1f} s incl. set-up; "
            f"loss {info['first_loss']:.4f} → {info['final_loss']:.4f}; default {type(loop).__name__} steps → "
            f"≈{per_step * {'vae': VaeConfig, 'clip': ClipConfig, 'ldm': LdmConfig}[name]().train.steps / 60:.1f} min"
        )
    n_test = int((pd.read_parquet(w["triplets"])["split"] == "test").sum())
    for sampler, steps in (("ddim", 100), ("ddim", 25), ("dpmsolver++", 25), ("dpmsolver++", 20)):
        cfg = SampleConfig(sampler=sampler, steps=steps)
        info, s = timed(
            lambda cfg=cfg, sampler=sampler, steps=steps: sample(
                w["images"],
                w["embeddings"],
                w["triplets"],
                root / "vae",
                root / "ldm",
                cfg,
                args.max_events,
                root / f"s_{sampler}_{steps}",
            )
        )
        print(
            f"sample {sampler:11s} {steps:3d} steps: {info['seconds_per_image']:.3f} s/image "
            f"({n_test} test pairs, {s:.1f} s total)"
        )
    if args.full:
        tri = pd.read_parquet(w["triplets"]).set_index("pair_id")
        store = {}
        import h5py

        with h5py.File(w["images"]) as f:
            store = dict(zip([d.decode() for d in f["dicom_id"][:]], f["pixels"][:]))
        res = []
        for p in sorted((root / "s_dpmsolver++_25").glob("*.png")):
            r = tri.loc[p.stem]
            res.append(
                (
                    blob(np.asarray(Image.open(p)).astype(float)),
                    blob(store[r.trg_dicom_id].astype(float)),
                    blob(store[r.prev_dicom_id].astype(float)),
                )
            )
        gen, trg, prev = np.array(res).T
        print(
            f"event use (toy world, DPM-Solver++ 25): corr(sample, target) = {np.corrcoef(gen, trg)[0, 1]:.3f}, "
            f"corr(previous, target) = {np.corrcoef(prev, trg)[0, 1]:.3f}, corr(sample−previous, target−previous) = "
            f"{np.corrcoef(gen - prev, trg - prev)[0, 1]:.3f}"
        )
    print(f"(artifacts under {root})")


if __name__ == "__main__":
    main()
