"""Repair the tokenizer transformers derives from a GGUF, and check it against the GGUF's own vocabulary.

transformers' GGUF conversion has given SmolLM2 `<|im_start|>` as EOS, a BOS token the model must not get, and a
98 MB copy of the GGUF as `tokenizer.model` (issue 3); the catalogue says what is right and this makes it so.
BPE merges are written as "a b" strings: tokenizers holds 17 MB more (SmolLM2, 49k merges) after loading them as
[a, b] pairs, the form transformers writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelBuildError

_SEQUENCE_A = {"Sequence": {"id": "A", "type_id": 0}}
_SEQUENCE_B = {"Sequence": {"id": "B", "type_id": 1}}


def repair_tokenizer(model_dir: Path, *, eos_token: str | None, bos_token: str | None) -> tuple[int, ...]:
    """Fix tokenizer.json, tokenizer_config.json and genai_config.json in place; returns the EOS token ids."""
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = _vocab(data)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    eos_token = eos_token or _token_text(config.get("eos_token"))
    if eos_token not in vocab:
        raise ModelBuildError(f"EOS token {eos_token!r} is not in the vocabulary of {path}")
    if bos_token is None:
        post = data.get("post_processor") or {}
        if post.get("type") == "TemplateProcessing":
            data["post_processor"] = {
                **post,
                "single": [_SEQUENCE_A],
                "pair": [_SEQUENCE_A, _SEQUENCE_B],
                "special_tokens": {},
            }
    _merges_as_strings(data)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    (model_dir / "tokenizer.model").unlink(missing_ok=True)
    config.update(
        eos_token=eos_token, bos_token=bos_token, add_bos_token=bos_token is not None, add_eos_token=False
    )
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    eos_id = vocab[eos_token]
    genai_path = model_dir / "genai_config.json"
    if genai_path.is_file():
        genai = json.loads(genai_path.read_text(encoding="utf-8"))
        genai["model"]["eos_token_id"] = eos_id
        genai["model"]["pad_token_id"] = eos_id
        if bos_token is not None:
            genai["model"]["bos_token_id"] = vocab[bos_token]
        genai_path.write_text(json.dumps(genai, indent=4), encoding="utf-8")
    return (eos_id,)


def gguf_tokens(gguf: Path) -> list[str]:
    """The GGUF's own vocabulary, id order (needs the `gguf` package: export extra)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[index]).decode("utf-8", errors="replace") for index in field.data]


def check_vocabulary(model_dir: Path, gguf: Path) -> None:
    """Every id must map to the GGUF's token: a shifted or re-ordered vocabulary fails the build."""
    ours = _vocab(json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")))
    by_id = {index: token for token, index in ours.items()}
    theirs = gguf_tokens(gguf)
    # SentencePiece vocabularies write a space as U+2581 in tokenizer.json and as a plain space in some GGUFs
    wrong = [
        i
        for i, token in enumerate(theirs)
        if (by_id.get(i) or "").replace("\u2581", " ") != token.replace("\u2581", " ")
    ]
    if wrong:
        examples = ", ".join(f"{i}: {by_id.get(i)!r} vs {theirs[i]!r}" for i in wrong[:5])
        raise ModelBuildError(f"tokenizer vocabulary differs from the GGUF's at {len(wrong)} ids ({examples})")


def _merges_as_strings(data: dict) -> None:
    """[["a", "b"], ...] -> ["a b", ...] where no piece holds a space (byte-level BPE pieces never do)."""
    merges = data["model"].get("merges") if data["model"].get("type") == "BPE" else None
    if not merges or not all(isinstance(m, list) for m in merges):
        return
    if any(" " in piece for merge in merges for piece in merge):
        return  # a space inside a piece would be read as the separator
    data["model"]["merges"] = [" ".join(merge) for merge in merges]


def _vocab(data: dict) -> dict[str, int]:
    vocab = dict(data["model"].get("vocab") or {})
    if isinstance(data["model"].get("vocab"), list):  # Unigram: [[piece, score], ...]
        vocab = {piece: i for i, (piece, _score) in enumerate(data["model"]["vocab"])}
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    return vocab


def _token_text(token: object) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None
