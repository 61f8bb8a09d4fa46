"""Standard FID features: pytorch-fid's InceptionV3 (pool3, 2048-d) from a user-supplied weights file.

The file is checked by its SHA-256 prefix before use, because a random-weights Inception gives FID ≈ 0
on clearly different sets: nothing here ever falls back to random weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # pt_inception-2015-12-05-6726825d.pth (torch.hub naming convention)
CONFIG_KEY = "evaluate.inception_weights"
NOT_SET_REASON = f"set {CONFIG_KEY} to a local pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights)"


class WeightsError(ValueError):
    """A weights file is missing, has the wrong hash or the wrong layout; names the config key."""


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fid_inception(path: str | Path, expected_prefix: str = FID_WEIGHTS_SHA256_PREFIX) -> torch.nn.Module:
    """pytorch-fid's `InceptionV3([pool3])` with the weights of `path`, after the hash check.

    `expected_prefix` exists for tests that build a stand-in file; the pipeline never passes it.
    """
    import pytorch_fid.inception as pfi

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{CONFIG_KEY}: weights file not found: {path}")
    digest = sha256_of(path)
    if not digest.startswith(expected_prefix):
        raise WeightsError(
            f"{CONFIG_KEY}: {path} has SHA-256 {digest[:16]}..., expected prefix {expected_prefix} "
            "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth); refusing to compute FID with other weights"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda url, **kw: state  # pytorch-fid would download; hand it the file instead
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
    except RuntimeError as err:  # strict load_state_dict: wrong keys or shapes
        raise WeightsError(f"{CONFIG_KEY}: {path} does not have pytorch-fid's FID Inception layout: {err}") from None
    finally:
        pfi.load_state_dict_from_url = original
    return model.eval()


@torch.no_grad()
def inception_features(
    model: torch.nn.Module, images: np.ndarray, device: str = "cpu", batch_size: int = 32
) -> np.ndarray:
    """Pool3 features (N, 2048) of uint8 grayscale images, replicated to RGB in [0, 1] (resized to 299 inside)."""
    model = model.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).float().div(255.0)
        x = x[:, None].expand(-1, 3, -1, -1)
        out.append(model(x)[0].flatten(1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))


PREPROCESSING = (
    "grayscale replicated to RGB, [0,1], bilinear resize to 299 (pytorch-fid, no antialias), PNG/uint8 input"
)
