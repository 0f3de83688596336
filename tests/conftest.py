"""Shared fixtures: small real checkpoints written by the tests themselves."""

from pathlib import Path

import pytest

ESM_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]


def save_tiny_esm2(folder: Path, layers: int = 2) -> Path:
    """A random-initialised ESM-2 checkpoint (2 layers unless told) with its tokenizer, saved with save_pretrained."""
    import torch
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(ESM_TOKENS) + "\n")
    tokenizer = EsmTokenizer(vocab_file=str(folder / "vocab.txt"))
    config = EsmConfig(
        vocab_size=len(ESM_TOKENS), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=300, pad_token_id=1, mask_token_id=32,
        position_embedding_type="rotary", token_dropout=True,
    )
    torch.manual_seed(0)
    model = EsmModel(config, add_pooling_layer=False)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_esm2(tmp_path_factory):
    return save_tiny_esm2(tmp_path_factory.mktemp("esm2") / "tiny")
