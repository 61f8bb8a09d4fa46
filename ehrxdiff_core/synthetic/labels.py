"""CheXpert-style study labels from the latent findings: thresholds, uncertainty near them, noise.

Mimics what a report labeller produces: clear findings are 1.0, clearly absent ones are 0.0 or
not mentioned (blank), borderline ones are often -1.0 (uncertain), and a fraction are simply wrong.
"""

from __future__ import annotations

import numpy as np

from .process import AT, CM, CO, ED, EF, PX, SD

MARGIN = 0.08  # default half-width of the uncertain band around a threshold (synthetic.uncertain_band)
# label (alphabetical, as in the file) → (latent index or None, threshold)
RULES: tuple[tuple[str, int | None, float], ...] = (
    ("Atelectasis", AT, 0.35),
    ("Cardiomegaly", CM, 0.55),
    ("Consolidation", CO, 0.4),
    ("Edema", ED, 0.35),
    ("Enlarged Cardiomediastinum", CM, 0.75),
    ("Fracture", None, 0.0),
    ("Lung Lesion", None, 0.0),
    ("Lung Opacity", -1, 0.4),  # max of consolidation, edema, atelectasis
    ("No Finding", None, 0.0),
    ("Pleural Effusion", EF, 0.3),
    ("Pleural Other", None, 0.0),
    ("Pneumonia", CO, 0.45),
    ("Pneumothorax", PX, 0.2),
    ("Support Devices", SD, 0.5),
)
_RARE = {"Fracture": 0, "Lung Lesion": 1, "Pleural Other": 2}


def study_labels(
    state: np.ndarray,
    infected: bool,
    rare: np.ndarray,
    label_noise: float,
    rng: np.random.Generator,
    uncertain_band: float = MARGIN,
    uncertain_rate: float = 0.5,
    blank_negative_rate: float = 0.6,
) -> list[str]:
    """The 14 label cells of one study as written in the CSV: '1.0', '0.0', '-1.0' or '' (blank).

    With `label_noise`, `uncertain_band` and `blank_negative_rate` at 0, a finding's cell is exactly its
    hidden severity thresholded (1.0 above, else 0.0): the labels a science run scores against.
    """
    u = rng.random((len(RULES), 3))
    out: list[str] = []
    for k, (name, idx, thr) in enumerate(RULES):
        if name == "No Finding":
            out.append("")  # filled below
            continue
        if idx is None:
            out.append("1.0" if rare[_RARE[name]] else "")
            continue
        x = max(state[CO], state[ED], state[AT]) if idx == -1 else float(state[idx])
        if name == "Pneumonia" and not infected:
            x = min(x, thr)  # an opacity without infection is at most "possible pneumonia"
        if abs(x - thr) < uncertain_band and u[k, 0] < uncertain_rate:
            val = -1.0
        else:
            val = 1.0 if x > thr else 0.0
            if u[k, 1] < label_noise:
                val = 1.0 - val
        if val == 0.0 and u[k, 2] < blank_negative_rate:
            out.append("")  # negatives are mostly not mentioned
        else:
            out.append({1.0: "1.0", 0.0: "0.0", -1.0: "-1.0"}[val])
    findings = [v for (name, _, _), v in zip(RULES, out) if name not in ("No Finding", "Support Devices")]
    nf = RULES.index(next(r for r in RULES if r[0] == "No Finding"))
    out[nf] = "" if any(v in ("1.0", "-1.0") for v in findings) else "1.0"
    return out
