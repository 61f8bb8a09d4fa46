"""Figures as PNG bytes (matplotlib, Agg), so the report can embed them and Snakemake can register them."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def loss_curve_png(history: pd.DataFrame, title: str) -> bytes:
    """Every loss-like column of a training log against `step` (log scale when all positive)."""
    if "step" not in history.columns:
        raise ValueError(f"{title}: metrics.csv has no 'step' column")
    cols = [
        c
        for c in history.columns
        if c != "step" and ("loss" in c or c.startswith("val")) and pd.api.types.is_numeric_dtype(history[c])
    ]
    fig, ax = plt.subplots(figsize=(5, 3))
    for c in cols:
        ax.plot(history["step"], history[c], label=c, lw=1.2)
    values = history[cols].to_numpy(dtype=float) if cols else np.zeros(1)
    if cols and np.nanmin(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    if cols:
        ax.legend(fontsize=7)
    return _png(fig)


def image_png(pixels: np.ndarray) -> bytes:
    """A uint8 grayscale array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()
