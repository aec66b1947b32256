"""The Llama-3 byte-level BPE tokenizer of a checkpoint, as GGUF tokenizer metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from mllm_cpu.core.errors import InputError

from .chat_template import check_chat_template
from .checkpoint_files import (
    CHAT_TEMPLATE,
    GENERATION_CONFIG,
    TOKENIZER,
    TOKENIZER_CONFIG,
    integer,
    plain,
    read_json_object,
    read_text,
    shown,
    wrong_type,
)

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


def read_tokenizer(folder: Path, n_vocab: int, generation: dict[str, Any] | None = None) -> TokenizerSpec:
    """Read tokenizer.json and tokenizer_config.json of a checkpoint, every value used checked for its type.

    `generation` is the checkpoint's generation_config.json (read here when not given).
    """
    path = folder / TOKENIZER
    if not path.exists():
        raise InputError(f"{folder}: {TOKENIZER} is missing (the Llama-3 tokenizer the model ships with)")
    data = read_json_object(path)
    config_path = folder / TOKENIZER_CONFIG
    config = read_json_object(config_path, required=False)
    generation_path = folder / GENERATION_CONFIG
    if generation is None:
        generation = read_json_object(generation_path, required=False)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else None
        raise InputError(f"{path}: not a byte-level BPE tokenizer (model type {plain(kind)})")
    _check_pre_tokenizer(path, data)

    vocab = _vocabulary(path, model["vocab"], n_vocab)
    special: set[int] = set()
    user_defined: set[int] = set()
    added_tokens = data.get("added_tokens", [])
    if not isinstance(added_tokens, list):
        raise wrong_type(path, "added_tokens", "a list", added_tokens)
    for index, added in enumerate(added_tokens):
        field = f"added_tokens[{index}]"
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise wrong_type(path, field, 'an object with a "content" string', added)
        token_id = _token_id(path, f"{field}.id", added.get("id"), n_vocab)
        vocab[added["content"]] = token_id
        (special if added.get("special") else user_defined).add(token_id)

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

    def token_id_of(key: str) -> int | None:
        value = config.get(key)
        text = value.get("content") if isinstance(value, dict) else value
        if text is not None and not isinstance(text, str):
            raise wrong_type(config_path, key, 'a token, or an object with a "content" token', value)
        return vocab.get(text) if text is not None else None

    generation_bos = _id_list(generation_path, "bos_token_id", generation.get("bos_token_id"), n_vocab)
    generation_eos = _id_list(generation_path, "eos_token_id", generation.get("eos_token_id"), n_vocab)
    bos_id = token_id_of("bos_token")
    if bos_id is None and generation_bos:
        bos_id = generation_bos[0]
    eos_id = token_id_of("eos_token")
    if eos_id is None and generation_eos:
        eos_id = generation_eos[0]
    eot_id, eom_id = vocab.get("<|eot_id|>"), vocab.get("<|eom_id|>")
    stop_ids = sorted({i for i in (eos_id, eot_id, eom_id, *generation_eos) if i is not None})
    return TokenizerSpec(
        tokens=tokens,
        token_types=[int(t) for t in types],
        merges=_merges(path, model.get("merges", [])),
        bos_id=bos_id,
        eos_id=eos_id,
        eot_id=eot_id,
        eom_id=eom_id,
        add_bos=_adds_bos(config_path, config, data, bos_id, vocab),
        chat_template=read_chat_template(folder, config),
        stop_ids=stop_ids,
    )


def _vocabulary(path: Path, vocab: dict[str, Any], n_vocab: int) -> dict[str, int]:
    """The BPE vocabulary, each id an integer that fits the model's vocabulary."""
    for text, token_id in vocab.items():
        if not (integer(token_id) and 0 <= token_id < n_vocab):
            _token_id(path, f"model.vocab[{shown(text, 30)}]", token_id, n_vocab)
    return dict(vocab)


def _token_id(path: Path, field: str, value: Any, n_vocab: int) -> int:
    """A token id from a file: an integer below the model's vocabulary size."""
    if not integer(value) or value < 0:
        raise wrong_type(path, field, "a token id (a non-negative integer)", value)
    if value >= n_vocab:
        raise InputError(f"{path}: token id {value} ({field}) does not fit the model's vocabulary of {n_vocab}")
    return int(value)


def _id_list(path: Path, field: str, value: Any, n_vocab: int) -> list[int]:
    """A token id, or a list of them, as a list ([] for null)."""
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [_token_id(path, field, v, n_vocab) for v in values]


def _merges(path: Path, merges: Any) -> list[str]:
    """BPE merges as GGUF stores them ("a b"), from either form tokenizer.json uses ("a b" or ["a", "b"])."""
    if not isinstance(merges, list):
        raise wrong_type(path, "model.merges", "a list", merges)
    written = []
    for index, merge in enumerate(merges):
        if isinstance(merge, str):
            written.append(merge)
        elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(part, str) for part in merge):
            written.append(" ".join(merge))
        else:
            raise wrong_type(path, f"model.merges[{index}]", "a string or a pair of strings", merge)
    return written


def _check_pre_tokenizer(path: Path, data: dict[str, Any]) -> None:
    """Only the Llama-3 split pattern maps onto llama.cpp's llama-bpe pre-tokenizer."""
    patterns = []
    pending: list[Any] = [data.get("pre_tokenizer")]
    while pending:  # depth is bounded by the JSON reader; a loop still needs no stack
        node = pending.pop()
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, dict) and "Regex" in pattern:
                patterns.append(pattern["Regex"])
            pending.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            pending.extend(reversed(node))
    if patterns != [LLAMA3_SPLIT_PATTERN]:
        raise InputError(f"{path}: the pre-tokenizer is not Llama-3's split pattern, which is the only one supported")


def _adds_bos(
    config_path: Path, config: dict[str, Any], data: dict[str, Any], bos_id: int | None, vocab: dict[str, int]
) -> bool:
    if config.get("add_bos_token") is not None:
        if not isinstance(config["add_bos_token"], bool):
            raise wrong_type(config_path, "add_bos_token", "true or false", config["add_bos_token"])
        return config["add_bos_token"]
    processor = json.dumps(data.get("post_processor") or {})
    return bos_id is not None and any(text in processor for text, token_id in vocab.items() if token_id == bos_id)


def read_chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """The chat template of tokenizer_config.json (its default one of several), else of chat_template.jinja.

    It must be text that compiles as llama-cpp-python's Jinja environment compiles it.
    """
    config_path, jinja_file = folder / TOKENIZER_CONFIG, folder / CHAT_TEMPLATE
    template = config.get("chat_template")
    if isinstance(template, list):
        if not all(isinstance(entry, dict) and isinstance(entry.get("template"), str) for entry in template):
            raise wrong_type(config_path, "chat_template", 'a template, or a list of {"name", "template"}', template)
        named = {entry.get("name"): entry["template"] for entry in template}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise wrong_type(config_path, "chat_template", "a template (text)", template)
    source = config_path
    if not template and jinja_file.exists():
        template, source = read_text(jinja_file), jinja_file
    if not template:
        return None
    check_chat_template(template, source)
    return template
