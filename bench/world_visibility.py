"""How visible each dynamic finding is in the synthetic world's rendered radiographs.

The evaluator can only score a finding that the images show, so this measures the renderer alone, with no
model, for the four findings of the science run's truth macro (effusion, edema, consolidation, atelectasis):
frontal films of random anatomies and random hidden states are drawn with the renderer the world uses
(full pose, exposure and pixel noise), and a linear read-out (ridge regression, penalty chosen by
cross-validation on the training films) predicts from the pixels

- **level**: the finding's severity from one film;
- **change**: the severity change from the difference of two films of the same patient and view, drawn
  with each of the four moved by +/- `--delta` (the pose, exposure and noise of each film drawn anew).

Focal findings sit on one side of the chest per patient; each film is mirrored so that finding's side is
image-left before its read-out, so a linear model can reach it (the side is anatomy, not state). Prints the
Pearson r on held-out films per finding. A low r flags a finding the films may show poorly; it is a lower
bound, since a non-linear reader (the evaluator's CNN) can see what a linear one cannot.

    python bench/world_visibility.py                  # 64 px, 4,000 films, delta 0.05
    python bench/world_visibility.py --px 64 --n 6000 --delta 0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from sklearn.linear_model import RidgeCV

    from ehrxdiff_core.synthetic import render
    from ehrxdiff_core.synthetic.process import AT, CM, CO, ED, EF, SD

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--px", type=int, default=64, help="image size the films are drawn at")
    ap.add_argument("--n", type=int, default=4000, help="films (pairs for the change read-out); 25 %% held out")
    ap.add_argument("--delta", type=float, default=0.05, help="severity change between the two films of a pair")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    findings = {"pleural_effusion": (EF, None), "edema": (ED, None), "consolidation": (CO, "cons_side"),
                "atelectasis": (AT, "atel_side")}  # fmt: skip
    idx = [i for i, _ in findings.values()]
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    films, pairs, level, change, sides = [], [], [], [], []
    for _ in range(args.n):
        an = render.Anatomy.draw(rng, female=bool(rng.random() < 0.5), age=float(rng.uniform(20, 90)))
        view = "AP" if rng.random() < 0.6 else "PA"
        s = np.zeros(7)
        s[[EF, ED, CO]] = rng.uniform(0.0, 0.8, 3)
        s[AT] = rng.uniform(0.0, 0.6)
        s[CM], s[SD] = rng.uniform(0.2, 0.8), 0.02
        s2 = s.copy()
        s2[idx] = np.clip(s[idx] + rng.choice([-1.0, 1.0], len(idx)) * args.delta, 0.0, 1.0)
        a = render.render_chest(s, an, view, args.px, rng).astype(np.float32) / 255
        b = render.render_chest(s2, an, view, args.px, rng).astype(np.float32) / 255
        films.append(a)
        pairs.append(b - a)
        level.append(s[idx])
        change.append((s2 - s)[idx])
        sides.append([-1 if side is None else getattr(an, side) for _, side in findings.values()])  # -1: as drawn
    films, pairs = np.stack(films), np.stack(pairs)
    level, change, sides = np.array(level), np.array(change), np.array(sides)
    n_train = int(0.75 * args.n)
    print(f"{args.n} films at {args.px} px, change +/-{args.delta}, drawn in {time.perf_counter() - t0:.0f} s\n")
    print("| finding | level r | change r |")
    print("|---|---:|---:|")
    for j, name in enumerate(findings):
        flip = sides[:, j] > 0  # mirror so the finding's side is image-left
        row = []
        for x, y in ((films, level[:, j]), (pairs, change[:, j])):
            x = np.where(flip[:, None, None], x[:, :, ::-1], x).reshape(len(x), -1)
            model = RidgeCV(alphas=np.logspace(-1, 4, 8)).fit(x[:n_train], y[:n_train])
            row.append(np.corrcoef(model.predict(x[n_train:]), y[n_train:])[0, 1])
        print(f"| {name} | {row[0]:.3f} | {row[1]:.3f} |")


if __name__ == "__main__":
    main()
