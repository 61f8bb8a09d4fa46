"""Optional rewrite of augmented event texts into plain sentences by a local causal LM (off by default).

Follows the re-implementation this project tracks: a small instruction model turns "table column value"
strings plus context into readable clinical sentences before encoding. Greedy decoding keeps it deterministic.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ehrxdiff_core import set_offline_flags
from ehrxdiff_core.config import RewriteConfig
from ehrxdiff_core.device import resolve_device

log = logging.getLogger(__name__)

PROMPT = "Rewrite this ICU record as one short clinical sentence.\nRecord: {text}\nSentence:"


def rewrite_id(cfg: RewriteConfig) -> str | None:
    """Identity of the rewrite step for the content hash (None when off)."""
    if not cfg.enabled:
        return None
    folder = _folder(cfg)
    conf = (folder / "config.json").read_bytes()
    return f"{folder.resolve()}|{hashlib.blake2b(conf, digest_size=8).hexdigest()}|{cfg.max_new_tokens}|greedy"


def _folder(cfg: RewriteConfig) -> Path:
    if cfg.model_path is None:
        raise ValueError(
            "text.rewrite.enabled is true but text.rewrite.model_path is not set (a local causal LM folder)"
        )
    folder = Path(cfg.model_path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text.rewrite.model_path: no causal LM folder with a config.json at {folder}")
    return folder


class Rewriter:
    def __init__(self, cfg: RewriteConfig, device: str = "auto", batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        set_offline_flags()
        folder = _folder(cfg)
        self.cfg = cfg
        self.device = resolve_device(device)
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.tok.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def rewrite(self, texts: list[str]) -> list[str]:
        """One sentence per text; an empty generation keeps the input text."""
        out: list[str] = []
        for s in tqdm(
            range(0, len(texts), self.batch_size), desc="rewrite", unit="batch", disable=len(texts) <= self.batch_size
        ):
            chunk = texts[s : s + self.batch_size]
            enc = self.tok([PROMPT.format(text=t) for t in chunk], return_tensors="pt", padding=True).to(self.device)
            gen = self.model.generate(
                **enc, do_sample=False, max_new_tokens=self.cfg.max_new_tokens, pad_token_id=self.tok.pad_token_id
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            for t, g in zip(chunk, self.tok.batch_decode(new, skip_special_tokens=True)):
                g = " ".join(g.split())
                out.append(g if g else t)
        return out
