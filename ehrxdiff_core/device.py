"""The one place a device setting (`compute.device`) becomes a torch device.

Every stage that runs torch (training, sampling, the text encoder, the evaluator, the controls)
resolves its device here: `auto` is CUDA when this process can see a GPU, else the CPU; anything
else ('cpu', 'cuda', 'cuda:1', 'mps') is used as given. The setting itself is validated before any
job runs (`ehrxdiff_core.config`), and it reaches the jobs outside their params on purpose: the
machine a job runs on is no reason to rerun it.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`compute.device` as a torch device ('auto': CUDA when available, else the CPU)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
