"""The evaluator network: one image backbone with heads for findings, sex and age.

Its penultimate layer is also the feature space of the self-trained Fréchet distance. Saved as a
folder: `model.safetensors` + `config.json` (architecture, labels, image size, age scaling).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


class SmallCNN(nn.Module):
    """Four stride-2 stages of two 3x3 convs; fast on CPU at 64 px (the demo evaluator)."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        c_in = 1
        for c in chans:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


class DenseNet121Gray(nn.Module):
    """torchvision DenseNet-121, random init, first conv taking one channel (the paper preset)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import densenet121

        net = densenet121(weights=None)
        net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.features = net.features
        self.out_dim = net.classifier.in_features  # 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)


class EvaluatorNet(nn.Module):
    """Backbone + linear heads: one logit per finding, one for P(male), one for standardised age."""

    def __init__(self, arch: str, n_labels: int, width: int = 32):
        super().__init__()
        if arch == "small_cnn":
            self.backbone = SmallCNN(width)
        elif arch == "densenet121":
            self.backbone = DenseNet121Gray()
        else:
            raise ValueError(f"evaluator.arch: unknown architecture {arch!r} (small_cnn or densenet121)")
        self.n_labels = n_labels
        self.head = nn.Linear(self.backbone.out_dim, n_labels + 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone(x))
        return {"findings": out[:, : self.n_labels], "sex": out[:, self.n_labels], "age": out[:, self.n_labels + 1]}


def to_input(pixels_uint8: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, S, S) -> float (B, 1, S, S) in [-1, 1], the project's image convention."""
    x = torch.as_tensor(pixels_uint8, device=device)
    return x.float().div(127.5).sub(1.0)[:, None]


def save_evaluator(model: EvaluatorNet, meta: dict, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(meta, indent=2))


def load_evaluator(folder: str | Path, device: str = "cpu") -> tuple[EvaluatorNet, dict]:
    """The trained evaluator and its metadata (labels, image size, age mean/std)."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"evaluator folder {folder} lacks {name}: run the train_evaluator stage first")
    meta = json.loads((folder / "config.json").read_text())
    model = EvaluatorNet(meta["arch"], len(meta["labels"]), meta.get("width", 32))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval(), meta


@torch.no_grad()
def predict(
    model: EvaluatorNet, meta: dict, images: np.ndarray, device: str = "cpu", batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Finding probabilities (N, L), P(male) (N,), age in years (N,) and penultimate features (N, D)."""
    if images.ndim != 3 or images.shape[1:] != (meta["image_size"],) * 2:
        raise ValueError(f"images of shape {images.shape} do not match the evaluator's size {meta['image_size']}")
    model.eval()
    outs: dict[str, list] = {"probs": [], "p_male": [], "age": [], "features": []}
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size], device)
        feats = model.features(x)
        head = model.head(feats)
        n = model.n_labels
        outs["probs"].append(torch.sigmoid(head[:, :n]).double().cpu().numpy())
        outs["p_male"].append(torch.sigmoid(head[:, n]).double().cpu().numpy())
        outs["age"].append((head[:, n + 1].double() * meta["age_std"] + meta["age_mean"]).cpu().numpy())
        outs["features"].append(feats.double().cpu().numpy())
    empty = {"probs": (0, model.n_labels), "p_male": (0,), "age": (0,), "features": (0, model.backbone.out_dim)}
    return {k: (np.concatenate(v) if v else np.zeros(empty[k])) for k, v in outs.items()}
