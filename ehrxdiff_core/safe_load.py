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


def load_module_tensors(path: str | Path, module_classes: list[type]) -> dict[str, torch.Tensor]:
    """The tensors of a file that pickles a whole `nn.Module` (or a state dict), as a flat state dict.

    Besides tensors and plain values, only `module_classes` (classes of installed libraries, not of the
    file) may be rebuilt; a rebuilt module is then only walked through its `_parameters`, `_buffers`
    and `_modules` dicts, none of its methods (or hooks the file could have set) is called.
    """
    try:
        with torch.serialization.safe_globals(module_classes):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)|(persistent_load of storage)", str(err))
        what = f" (it refers to {found.group(1)})" if found and found.group(1) else ""
        what = " (a module saved in torch's legacy format, with its source code)" if found and found.group(2) else what
        raise UnsafePickleError(
            f"{path} contains pickled objects other than tensors, plain values and known module classes{what}; "
            "it is refused, as unpickling them could run code"
        ) from None
    state = _walk_module(obj) if isinstance(obj, torch.nn.Module) else obj
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UnsafePickleError(f"{path} holds neither a module nor a state dict of tensors")
    return state


def _walk_module(module: torch.nn.Module, prefix: str = "") -> dict:
    attrs = vars(module)
    skip = attrs.get("_non_persistent_buffers_set") or set()
    state = {prefix + k: v for k, v in (attrs.get("_parameters") or {}).items() if v is not None}
    state.update({prefix + k: v for k, v in (attrs.get("_buffers") or {}).items() if v is not None and k not in skip})
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, torch.nn.Module):
            state.update(_walk_module(child, f"{prefix}{name}."))
    return {k: (v.detach() if isinstance(v, torch.nn.Parameter) else v) for k, v in state.items()}
