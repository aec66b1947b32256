"""The Llama-3 byte-level BPE tokenizer of a checkpoint, as GGUF tokenizer metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from mllm_cpu.core.errors import InputError

LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_CPP_PRE_TOKENIZER = "llama-bpe"


@dataclass
class TokenizerSpec:
    """Everything llama.cpp needs to tokenize and to stop like the HF tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None = None
    eom_id: int | None = None
    add_bos: bool = True
    chat_template: str | None = None
    stop_ids: list[int] = field(default_factory=list)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write the tokenizer keys into a GGUF writer."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(LLAMA_CPP_PRE_TOKENIZER)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        for key_writer, token_id in (
            (writer.add_bos_token_id, self.bos_id),
            (writer.add_eos_token_id, self.eos_id),
            (writer.add_eot_token_id, self.eot_id),
            (writer.add_eom_token_id, self.eom_id),
        ):
            if token_id is not None:
                key_writer(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_tokenizer(folder: Path, n_vocab: int) -> TokenizerSpec:
    """Read tokenizer.json (+ tokenizer_config.json, generation_config.json) of a checkpoint."""
    data = _load_json(folder / "tokenizer.json", required=True)
    config = _load_json(folder / "tokenizer_config.json")
    generation = _load_json(folder / "generation_config.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise InputError(
            f"{folder / 'tokenizer.json'}: not a byte-level BPE tokenizer (model type {model.get('type')})"
        )
    _check_pre_tokenizer(folder, data)

    vocab: dict[str, int] = dict(model["vocab"])
    special: set[int] = set()
    user_defined: set[int] = set()
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        (special if added.get("special") else user_defined).add(added["id"])
    if max(vocab.values()) >= n_vocab:
        raise InputError(
            f"{folder / 'tokenizer.json'}: token id {max(vocab.values())} "
            f"does not fit the model's vocabulary of {n_vocab}"
        )

    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, token_id in vocab.items():
        tokens[token_id] = text
        types[token_id] = (
            gguf.TokenType.CONTROL
            if token_id in special
            else gguf.TokenType.USER_DEFINED
            if token_id in user_defined
            else gguf.TokenType.NORMAL
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def token_id_of(value: Any) -> int | None:
        text = value.get("content") if isinstance(value, dict) else value
        return vocab.get(text) if isinstance(text, str) else None

    bos_id = token_id_of(config.get("bos_token")) or _first_id(generation.get("bos_token_id"))
    eos_id = token_id_of(config.get("eos_token"))
    generation_eos = _id_list(generation.get("eos_token_id"))
    if eos_id is None and generation_eos:
        eos_id = generation_eos[0]
    eot_id, eom_id = vocab.get("<|eot_id|>"), vocab.get("<|eom_id|>")
    stop_ids = sorted({i for i in (eos_id, eot_id, eom_id, *generation_eos) if i is not None})
    return TokenizerSpec(
        tokens=tokens,
        token_types=[int(t) for t in types],
        merges=merges,
        bos_id=bos_id,
        eos_id=eos_id,
        eot_id=eot_id,
        eom_id=eom_id,
        add_bos=_adds_bos(config, data, bos_id, vocab),
        chat_template=_chat_template(folder, config),
        stop_ids=stop_ids,
    )


def _load_json(path: Path, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise InputError(f"{path.parent}: {path.name} is missing (the Llama-3 tokenizer the model ships with)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data


def _check_pre_tokenizer(folder: Path, data: dict[str, Any]) -> None:
    """Only the Llama-3 split pattern maps onto llama.cpp's llama-bpe pre-tokenizer."""
    patterns = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, dict) and "Regex" in pattern:
                patterns.append(pattern["Regex"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(data.get("pre_tokenizer"))
    if patterns != [LLAMA3_SPLIT_PATTERN]:
        raise InputError(
            f"{folder / 'tokenizer.json'}: the pre-tokenizer is not Llama-3's split pattern, "
            "which is the only one supported"
        )


def _adds_bos(config: dict[str, Any], data: dict[str, Any], bos_id: int | None, vocab: dict[str, int]) -> bool:
    if "add_bos_token" in config:
        return bool(config["add_bos_token"])
    processor = json.dumps(data.get("post_processor") or {})
    return bos_id is not None and any(text in processor for text, token_id in vocab.items() if token_id == bos_id)


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = folder / "chat_template.jinja"
    if not template and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return template or None


def _id_list(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _first_id(value: Any) -> int | None:
    ids = _id_list(value)
    return ids[0] if ids else None
