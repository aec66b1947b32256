"""What a GGUF model file holds, for `mllm-cpu info` (`mllm-cpu models` lists the store: `listing.py`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.gguf_summary import summarize_header
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy
from mllm_cpu.core.gguf_keys import arch_key
from mllm_cpu.core.origin import Origin
from mllm_cpu.store import stored_origin

SPECIAL_TOKEN_KEYS = {
    "bos": gguf.Keys.Tokenizer.BOS_ID,
    "eos": gguf.Keys.Tokenizer.EOS_ID,
    "eot": gguf.Keys.Tokenizer.EOT_ID,
    "eom": gguf.Keys.Tokenizer.EOM_ID,
    "pad": gguf.Keys.Tokenizer.PAD_ID,
    "unk": gguf.Keys.Tokenizer.UNK_ID,
}
_SAMPLING_PREFIX = gguf.Keys.General.SAMPLING_TEMP.rsplit(".", 1)[0] + "."


@dataclass(frozen=True)
class SpecialToken:
    """A special token id and its text (None when the id is outside the vocabulary)."""

    id: int
    text: str | None


@dataclass(frozen=True)
class ModelDetails:
    """Metadata of one GGUF file, for `mllm-cpu info`; `runnable`/`problem` say whether it can run here."""

    file: str
    name: str
    architecture: str
    description: str
    source_architecture: str | None
    source_label: str | None
    parameters: int
    file_type: str
    type_mix: dict[str, int]
    type_mix_text: str
    context_length: int | None
    layers: int | None
    embedding_length: int | None
    heads: int | None
    kv_heads: int | None
    vocab_size: int | None
    tokenizer: str | None
    special_tokens: dict[str, SpecialToken]
    chat_template: bool
    sampling_defaults: dict[str, Any]
    file_bytes: int
    bits_per_weight: float
    runnable: bool
    problem: str | None
    origin: Origin

    def to_dict(self) -> dict[str, Any]:
        """The details as JSON-ready data."""
        return asdict(self)


def describe_model(path: Path) -> ModelDetails:
    """Metadata of one GGUF file; `runnable` and `problem` say whether this package can run it."""
    from mllm_cpu.model_file import validate_header  # its chat-template check imports jinja2: not for a listing

    header = read_gguf_header(path, keep_vocabulary=True)
    summary = summarize_header(header)
    arch = header.architecture
    tokens = header.get(gguf_keys.TOKENS) or []
    try:
        model = validate_header(header)
        description, problem = model.description, None
    except InputError as error:
        description, problem = arch, str(error)
    special = {}
    for name, key in SPECIAL_TOKEN_KEYS.items():
        token_id = header.get(key)
        if token_id is not None:
            text = tokens[token_id] if 0 <= token_id < len(tokens) else None
            special[name] = SpecialToken(int(token_id), text)
    return ModelDetails(
        file=str(summary.path),
        name=header.get(gguf_keys.NAME) or summary.path.stem,
        architecture=arch,
        description=description,
        source_architecture=header.get(gguf_keys.SOURCE_ARCHITECTURE),
        source_label=header.get(gguf_keys.SOURCE_LABEL),
        parameters=summary.parameters,
        file_type=summary.file_type,
        type_mix=summary.type_mix,
        type_mix_text=summary.type_mix_text(),
        context_length=header.get(arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, arch)),
        layers=header.get(arch_key(gguf.Keys.LLM.BLOCK_COUNT, arch)),
        embedding_length=header.get(arch_key(gguf.Keys.LLM.EMBEDDING_LENGTH, arch)),
        heads=header.get(arch_key(gguf.Keys.Attention.HEAD_COUNT, arch)),
        kv_heads=header.get(arch_key(gguf.Keys.Attention.HEAD_COUNT_KV, arch)),
        vocab_size=header.array_lengths.get(gguf_keys.TOKENS),
        tokenizer=header.get(gguf_keys.TOKENIZER_MODEL),
        special_tokens=special,
        chat_template=bool(header.get(gguf_keys.CHAT_TEMPLATE)),
        sampling_defaults={
            key.rsplit(".", 1)[-1]: value for key, value in header.metadata.items() if key.startswith(_SAMPLING_PREFIX)
        },
        file_bytes=summary.file_bytes,
        bits_per_weight=round(summary.bits_per_weight, 3),
        runnable=problem is None,
        problem=problem,
        origin=stored_origin(summary.path, header.metadata),
    )
