"""Reading `torch.save` files without running code.

A `.pt`/`.ckpt` file is a pickle, and unpickling may call any function the file names (a crafted
weights file can run a shell command). Every torch file the pipeline reads goes through
`torch.load(weights_only=True)`, which rebuilds only tensors and plain containers (dict, list,
tuple, str, int, float, bool, None) and refuses everything else before calling it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch


class UnsafePickleError(ValueError):
    """The file pickles objects other than tensors and plain values; nothing in it was run."""


def load_tensors(path: str | Path):
    """`torch.load(path, weights_only=True)` on the CPU; a refusal is an `UnsafePickleError` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise UnsafePickleError(
            f"{path} contains pickled objects other than tensors and plain values{what}; "
            "it is refused, as unpickling them could run code"
        ) from None
