"""Tokenizer repair: the faults transformers' GGUF conversion makes (wrong EOS, a BOS, a stray tokenizer.model)."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edge_agent.errors import ModelBuildError
from edge_agent.model.tiny import build_tiny_model
from edge_agent.model.tokenizer_repair import repair_tokenizer


def _broken_copy(tmp_path: Path) -> Path:
    model = build_tiny_model(tmp_path / "model")
    data = json.loads((model / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
    }
    (model / "tokenizer.json").write_text(json.dumps(data))
    (model / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_start|>", "bos_token": "<|im_start|>"})
    )
    (model / "tokenizer.model").write_bytes(b"a copy of the gguf")
    (model / "genai_config.json").write_text(json.dumps({"model": {"eos_token_id": 1, "bos_token_id": 1}}))
    return model


def test_repair_sets_eos_drops_bos_and_the_stray_file(tmp_path: Path):
    model = _broken_copy(tmp_path)
    assert Tokenizer.from_file(str(model / "tokenizer.json")).encode("hi").ids[0] == 1  # BOS added: broken

    assert repair_tokenizer(model, eos_token="<|im_end|>", bos_token=None) == (2,)

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert tokenizer.encode("hi").ids == tokenizer.encode("hi", add_special_tokens=False).ids
    assert 1 not in tokenizer.encode("hi").ids
    assert not (model / "tokenizer.model").exists()
    config = json.loads((model / "tokenizer_config.json").read_text())
    assert (
        config["eos_token"] == "<|im_end|>"
        and config["bos_token"] is None
        and config["add_bos_token"] is False
    )
    assert json.loads((model / "genai_config.json").read_text())["model"]["eos_token_id"] == 2


def test_unknown_eos_is_an_error(tmp_path: Path):
    model = _broken_copy(tmp_path)
    with pytest.raises(ModelBuildError, match="not in the vocabulary"):
        repair_tokenizer(model, eos_token="<eos>", bos_token=None)


def test_repair_writes_bpe_merges_as_strings_and_tokenizes_the_same(tmp_path: Path):
    model = _broken_copy(tmp_path)
    data = json.loads((model / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE" and len(data["model"]["merges"]) > 10
    data["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in data["model"]["merges"]]
    (model / "tokenizer.json").write_text(json.dumps(data))  # the [a, b] form transformers writes
    text = "The sky is blue because air scatters short waves more. 1234 <|im_end|>"
    before = Tokenizer.from_file(str(model / "tokenizer.json")).encode(text, add_special_tokens=False).ids

    repair_tokenizer(model, eos_token="<|im_end|>", bos_token=None)

    merges = json.loads((model / "tokenizer.json").read_text())["model"]["merges"]
    assert all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
    after = Tokenizer.from_file(str(model / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert after == before
