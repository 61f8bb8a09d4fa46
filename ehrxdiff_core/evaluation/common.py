"""Small helpers every evaluation stage shares: the evaluator with its image store, and JSON without NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ehrxdiff_core.atomic import atomic_path


def evaluator_and_images(evaluator_dir, images_h5, device: str):
    """The trained evaluator (model, meta, its labels) and the image store, checked to share one size."""
    from ehrxdiff_core.evaluation.evaluator import load_evaluator
    from ehrxdiff_core.evaluation.inputs import InputError, open_images

    model, meta = load_evaluator(evaluator_dir, device)
    store = open_images(images_h5)
    if store.size != meta["image_size"]:
        raise InputError(
            f"{images_h5}: images are {store.size} px but the evaluator in {evaluator_dir} expects {meta['image_size']}"
        )
    return model, meta, tuple(meta["labels"]), store


def to_json(obj):
    """numpy scalars/arrays to plain Python; NaN/inf must never reach the JSON (they become None)."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj, path: Path) -> None:
    """Write `obj` as JSON atomically (a killed job leaves no file that looks finished)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json(obj), indent=2, allow_nan=False))
