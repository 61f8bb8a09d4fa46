"""Optional XRV-FID features: torchxrayvision's DenseNet-121 (res224-all) from a user-supplied weights file.

The original EHRXDiff computes its FID with these features. torchxrayvision is an optional extra;
without it, or without `evaluate.xrv_weights`, the metric is recorded as not computed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ehrxdiff_core.safe_load import UnsafePickleError, load_module_tensors

CONFIG_KEY = "evaluate.xrv_weights"
WEIGHTS_NAME = "densenet121-res224-all"
CONVERSION_DOC = "README.md, section 'Offline, and weights files that cannot run code'"


def unavailable_reason(weights: str | None) -> str | None:
    """Why XRV-FID cannot run here (None when it can)."""
    if weights is None:
        return f"set {CONFIG_KEY} to torchxrayvision's {WEIGHTS_NAME} weights file (original file name)"
    try:
        import torchxrayvision  # noqa: F401
    except ImportError:
        return f"{CONFIG_KEY} is set but torchxrayvision is not installed (pip install torchxrayvision)"
    return None


def load_xrv_densenet(weights: str | Path) -> torch.nn.Module:
    """torchxrayvision's DenseNet-121 with the weights of `weights`, read without running the file's pickle.

    torchxrayvision unpickles its weights file (a whole pickled module) with `weights_only=False`, so
    the file is read here instead: `weights_only=True` with only torch's and torchxrayvision's module
    classes allowed, and the tensors copied into a model built without weights.
    """
    import torchxrayvision as xrv

    from ehrxdiff_core.evaluation.inception import WeightsError

    weights = Path(weights)
    expected = os.path.basename(xrv.models.model_urls[WEIGHTS_NAME]["weights_url"])
    if weights.name != expected or not weights.is_file():
        raise WeightsError(f"{CONFIG_KEY}: expected an existing file named {expected}, got {weights}")
    classes = [
        c
        for mod in (torch.nn, xrv.models)
        for c in vars(mod).values()
        if isinstance(c, type) and issubclass(c, torch.nn.Module)
    ]
    try:
        state = load_module_tensors(weights, classes)
    except UnsafePickleError as err:
        raise WeightsError(
            f"{CONFIG_KEY}: {err}; save its state dict once, in an environment where you trust the file, "
            f"as {CONVERSION_DOC} shows"
        ) from None
    state.pop("op_threshs", None)  # the classifier's output calibration, set by torchxrayvision; features do not use it
    model = xrv.models.DenseNet(weights=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # wrong keys or shapes
        raise WeightsError(f"{CONFIG_KEY}: {weights} does not hold a DenseNet-121 ({WEIGHTS_NAME}): {err}") from None
    return model.eval()


@torch.no_grad()
def xrv_features(model: torch.nn.Module, images: np.ndarray, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """1024-d average-pooled `model.features` (pre-ReLU, as EHRXDiff's eval_fid.py), xrv scaling to [-1024, 1024]."""
    model = model.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).float()[:, None] / 255.0 * 2048.0 - 1024.0
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        f = model.features(x)
        out.append(torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1024))
