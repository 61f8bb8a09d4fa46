"""bench/gpu_train_step.py in --smoke mode: the real LDM step (encodes included), one row per precision
and checkpointing setting, each MFU against its own precision's peak."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_table(bench, capsys):
    torch.set_num_threads(1)
    bench.main(["--smoke", "--batches", "2", "--peak-fp32", "0.01", "--peak-tf32", "0.02", "--peak-bf16", "0.04"])
    out = capsys.readouterr().out
    flops_line = next(ln for ln in out.splitlines() if ln.startswith("model FLOPs per training image"))
    assert "two autoencoder encodes" in flops_line and " 0.0 GFLOP" not in flops_line.split("encodes")[1]
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("2 ")]
    got = {(r[1], r[2]) for r in rows}
    assert got == {(v, c) for v in ("fp32", "tf32", "bf16", "bf16+cl") for c in ("on", "off")}
    peaks = {"fp32": 0.01, "tf32": 0.02, "bf16": 0.04, "bf16+cl": 0.04}
    for r in rows:
        tflops, peak, mfu = float(r[6]), float(r[7]), float(r[8].rstrip("%")) / 100
        assert peak == pytest.approx(peaks[r[1]])
        assert mfu == pytest.approx(tflops / peak, rel=0.1, abs=0.01)


def test_peaks_by_gpu_name(bench):
    assert bench.known_peaks("NVIDIA H100 80GB HBM3")["tf32"] == 495e12
    assert bench.known_peaks("NVIDIA H100 PCIe")["bf16"] == 756e12
    assert bench.known_peaks("NVIDIA A100-SXM4-80GB")["fp32"] == 19.5e12
    assert bench.known_peaks("NVIDIA H200")["bf16"] == 989e12
    assert bench.known_peaks("NVIDIA A10")["bf16"] == 125e12
    assert bench.known_peaks("some GPU")["bf16"] is None
