"""What a GGUF model file holds, for `mllm-cpu models` and `mllm-cpu info`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.gguf_summary import GGUFSummary, read_summary, summarize_header
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.model_file import validate_header
from mllm_cpu.store import stored_models

SPECIAL_TOKEN_KEYS = ("bos", "eos", "eot", "eom", "pad", "unk")


def store_listing() -> list[dict[str, Any]]:
    """One row per GGUF file in the store; an unreadable file gets a row with its error."""
    rows = []
    for path in stored_models():
        try:
            rows.append(_listing_row(read_summary(path)))
        except InputError as error:
            rows.append({"name": path.stem, "file": str(path), "error": str(error)})
    return rows


def _listing_row(summary: GGUFSummary) -> dict[str, Any]:
    metadata = summary.metadata
    arch = summary.architecture
    return {
        "name": summary.path.stem,
        "file": str(summary.path),
        "quant": summary.file_type,
        "bytes": summary.file_bytes,
        "parameters": summary.parameters,
        "context_length": metadata.get(f"{arch}.context_length"),
        "source_architecture": metadata.get(gguf_keys.SOURCE_ARCHITECTURE) or arch,
        "error": None,
    }


def describe_model(path: Path) -> dict[str, Any]:
    """Metadata of one GGUF file; `runnable` and `problem` say whether this package can run it."""
    header = read_gguf_header(path, keep_vocabulary=True)
    summary = summarize_header(header)
    arch = header.architecture
    tokens = header.get("tokenizer.ggml.tokens") or []
    try:
        model = validate_header(header)
        description, problem = model.description, None
    except InputError as error:
        description, problem = arch, str(error)
    special = {}
    for name in SPECIAL_TOKEN_KEYS:
        token_id = header.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            text = tokens[token_id] if 0 <= token_id < len(tokens) else None
            special[name] = {"id": int(token_id), "text": text}
    return {
        "file": str(summary.path),
        "name": header.get("general.name") or summary.path.stem,
        "architecture": arch,
        "description": description,
        "source_architecture": header.get(gguf_keys.SOURCE_ARCHITECTURE),
        "source_label": header.get(gguf_keys.SOURCE_LABEL),
        "parameters": summary.parameters,
        "file_type": summary.file_type,
        "type_mix": summary.type_mix,
        "type_mix_text": summary.type_mix_text(),
        "context_length": header.get(f"{arch}.context_length"),
        "layers": header.get(f"{arch}.block_count"),
        "embedding_length": header.get(f"{arch}.embedding_length"),
        "heads": header.get(f"{arch}.attention.head_count"),
        "kv_heads": header.get(f"{arch}.attention.head_count_kv"),
        "vocab_size": header.array_lengths.get("tokenizer.ggml.tokens"),
        "tokenizer": header.get("tokenizer.ggml.model"),
        "special_tokens": special,
        "chat_template": bool(header.get("tokenizer.chat_template")),
        "sampling_defaults": {
            key.rsplit(".", 1)[-1]: value
            for key, value in header.metadata.items()
            if key.startswith("general.sampling.")
        },
        "file_bytes": summary.file_bytes,
        "bits_per_weight": round(summary.bits_per_weight, 3),
        "runnable": problem is None,
        "problem": problem,
    }
