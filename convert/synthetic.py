"""Random-weight Hugging Face checkpoints with the exact MobileLLM-R1 and MobileLLM v1 shapes (pure numpy).

Speed and memory do not depend on weight values, so these let a user measure a board
before downloading gigabytes; the tokenizer has the real layout and size: Llama 3's
(tokenizer.json) for R1, Llama 2's (a SentencePiece tokenizer.model) for v1.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mllm_cpu.core.errors import InputError, naming_path

from .layout import hf_tensor_shapes
from .model_spec import V1_HF_CLASS, ModelSpec
from .sentencepiece_vocab import BYTE, CONTROL, NORMAL, SENTENCEPIECE_MODEL, UNKNOWN, bpe_model_bytes
from .tokenizer_spec import LLAMA3_SPLIT_PATTERN

LLAMA3_VOCAB = 128256
LLAMA3_REGULAR_TOKENS = 128000
BOS_ID, EOS_ID, EOM_ID, EOT_ID = 128000, 128001, 128008, 128009
LLAMA2_VOCAB = 32000
V1_UNK_ID, V1_BOS_ID, V1_EOS_ID = 0, 1, 2


def _v1(
    blocks: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, tied: bool = True, repeat: int = 1
) -> ModelSpec:
    """A MobileLLM v1 shape: `blocks` checkpoint blocks, each run `repeat` times (2 with layer sharing)."""
    runs = blocks * repeat
    return ModelSpec(
        runs, n_embd, n_ff, n_head, n_head_kv, 64, LLAMA2_VOCAB, 2048, 10_000.0, 1e-5, tied, V1_HF_CLASS, repeat
    )


SYNTHETIC_SPECS: dict[str, ModelSpec] = {
    "140m": ModelSpec(15, 576, 2048, 9, 3, 64, LLAMA3_VOCAB, 32768, 8_000_000.0, 1e-5, True),
    "360m": ModelSpec(15, 1024, 4096, 16, 4, 64, LLAMA3_VOCAB, 32768, 8_000_000.0, 1e-5, True),
    "950m": ModelSpec(22, 1536, 6144, 24, 6, 64, LLAMA3_VOCAB, 32768, 8_000_000.0, 1e-5, True),
    "tiny": ModelSpec(2, 128, 256, 2, 1, 64, LLAMA3_VOCAB, 4096, 8_000_000.0, 1e-5, True),
    "v1-125m": _v1(30, 576, 9, 3, 1536),
    "v1-125m-layer-share": _v1(30, 576, 9, 3, 1536, repeat=2),
    "v1-350m": _v1(32, 960, 15, 5, 2560),
    "v1-600m": _v1(40, 1152, 18, 6, 3072),
    "v1-1b": _v1(54, 1280, 20, 5, 3584),
    "v1-1.5b": _v1(54, 1600, 25, 5, 4352, tied=False),
}
"""MobileLLM-R1 (140m, 360m, 950m, and a tiny one for tests) and MobileLLM v1 (v1-*: shapes from the
published config.json files; the 1.5B alone has its own lm_head)."""
SYNTHETIC_FOLDER_NAMES = {
    "140m": "MobileLLM-R1-140M-synthetic",
    "360m": "MobileLLM-R1-360M-synthetic",
    "950m": "MobileLLM-R1-950M-synthetic",
    "tiny": "MobileLLM-R1-tiny-synthetic",
    "v1-125m": "MobileLLM-125M-synthetic",
    "v1-125m-layer-share": "MobileLLM-125M-layer-share-synthetic",
    "v1-350m": "MobileLLM-350M-synthetic",
    "v1-600m": "MobileLLM-600M-synthetic",
    "v1-1b": "MobileLLM-1B-synthetic",
    "v1-1.5b": "MobileLLM-1.5B-synthetic",
}

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_CHUNK_ELEMENTS = 1 << 24


def synthetic_spec(size: str) -> ModelSpec:
    """The spec of a synthetic preset (a key of SYNTHETIC_SPECS)."""
    key = size.strip().lower()
    if key not in SYNTHETIC_SPECS:
        raise InputError(f"unknown synthetic model {size}; choose from: {', '.join(SYNTHETIC_SPECS)}")
    return SYNTHETIC_SPECS[key]


def write_synthetic_checkpoint(size: str, parent: Path, seed: int = 0, force: bool = False) -> Path:
    """Write a random BF16 checkpoint folder for a preset under `parent`; returns the folder.

    An existing complete folder is reused unless `force`.
    """
    spec = synthetic_spec(size)
    folder = Path(parent) / SYNTHETIC_FOLDER_NAMES[size.strip().lower()]
    if (folder / "model.safetensors").is_file() and not force:
        return folder
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with naming_path(folder):  # a full disk names the checkpoint being written
            token_ids: dict[str, Any] = (
                {"bos_token_id": V1_BOS_ID, "eos_token_id": V1_EOS_ID}
                if spec.is_v1
                else {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, EOM_ID, EOT_ID]}
            )
            config = spec.to_config(**token_ids, pad_token_id=None)
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            (staging / "generation_config.json").write_text(json.dumps(token_ids, indent=2))
            if spec.is_v1:
                write_llama2_shaped_tokenizer(staging)
            else:
                write_llama3_shaped_tokenizer(staging)
            _write_random_weights(spec, staging / "model.safetensors", seed)
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_random_weights(spec: ModelSpec, path: Path, seed: int) -> None:
    """Stream a BF16 safetensors file: norms are ones, matrices N(0, 1/sqrt(fan_in))."""
    shapes = hf_tensor_shapes(
        spec, tied=spec.tied_embeddings, architecture=spec.gguf_architecture, repeat=spec.layer_repeat
    )
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    rng = np.random.default_rng(seed)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for shape in shapes.values():
            count = int(np.prod(shape))
            if len(shape) == 1:
                handle.write(_f32_to_bf16_bits(np.ones(count, dtype=np.float32)).tobytes())
                continue
            scale = np.float32(1.0 / np.sqrt(shape[-1]))
            for start in range(0, count, _CHUNK_ELEMENTS):
                values = rng.standard_normal(min(_CHUNK_ELEMENTS, count - start), dtype=np.float32) * scale
                handle.write(_f32_to_bf16_bits(values).tobytes())


def _f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in character for each byte value, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens of Llama 3 (ids 128000..128255) in order."""
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        4: "<|finetune_right_pad_id|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        8: "<|eom_id|>",
        9: "<|eot_id|>",
        10: "<|python_tag|>",
    }
    tokens, reserved = [], 0
    for offset in range(LLAMA3_VOCAB - LLAMA3_REGULAR_TOKENS):
        if offset in named:
            tokens.append(named[offset])
        else:
            tokens.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return tokens


_CONSONANTS = "bdfghklmnprstvz"
_VOWELS = "aeiou"
_SPACE = byte_alphabet()[ord(" ")]
_SPM_SPACE = "\u2581"  # SentencePiece's stand-in for a space
_THREE_SYLLABLE_STEP = 7919  # a prime: walks every three-syllable word once, in a scattered order


def pseudo_word_merges(count: int, space: str = _SPACE) -> list[tuple[str, str]]:
    """`count` BPE merges over byte-level text, each joining two tokens that exist before it.

    In order: 2- and 3-digit numbers, syllables (consonant + vowel), then words of two and
    three syllables, each also with a leading `space` (most three-syllable ones with one).
    """
    digits = "0123456789"
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    merges = [(a, b) for a in digits for b in digits]
    merges += [(a + b, c) for a in digits for b in digits for c in digits]
    merges += [(syllable[0], syllable[1]) for syllable in syllables]
    merges += [(space, syllable) for syllable in syllables]
    merges += [(a, b) for a in syllables for b in syllables]
    merges += [(space + a, b) for a in syllables for b in syllables]
    n = len(syllables)
    for k in range(n**3):
        if len(merges) >= count:
            break
        index = k * _THREE_SYLLABLE_STEP % n**3
        first, second, third = syllables[index // n // n], syllables[index // n % n], syllables[index % n]
        merges.append(((space if k % 4 else "") + first + second, third))
    if len(merges) < count:
        raise ValueError(f"only {len(merges)} pseudo-word merges for {count} tokens")
    return merges[:count]


def write_llama3_shaped_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer.json with Llama 3's structure, size and special tokens.

    Besides the 256 byte tokens (so any text can be encoded), its merges build numbers of
    two and three digits and pronounceable pseudo-words ("kotavi", " meruno"), so a
    random-weight model writes readable, if meaningless, text instead of arbitrary bytes.
    """
    vocab: dict[str, int] = {char: i for i, char in enumerate(byte_alphabet())}
    merges: list[list[str]] = []
    for first, second in pseudo_word_merges(LLAMA3_REGULAR_TOKENS - len(vocab)):
        vocab[first + second] = len(vocab)
        merges.append([first, second])
    specials = llama3_special_tokens()
    added = [
        {
            "id": LLAMA3_REGULAR_TOKENS + i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, text in enumerate(specials)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [BOS_ID], "tokens": ["<|begin_of_text|>"]}
            },
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "add_bos_token": True,
                "chat_template": LLAMA3_CHAT_TEMPLATE,
                "model_max_length": 32768,
            },
            indent=2,
        )
    )


def write_llama2_shaped_tokenizer(folder: Path) -> None:
    """A SentencePiece BPE tokenizer.model with Llama 2's layout and size (the vocabulary MobileLLM v1 uses).

    <unk>, <s>, </s>, the 256 byte pieces (byte fallback), the pseudo-word pieces of
    `pseudo_word_merges` (with SentencePiece's ▁ for a space), then the single characters they
    are built from; llama.cpp's SPM tokenizer and sentencepiece split text alike with it.
    """
    singles = [_SPM_SPACE, *(chr(code) for code in range(ord("!"), ord("~") + 1))]
    pieces = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    pieces += [(f"<0x{byte:02X}>", 0.0, BYTE) for byte in range(256)]
    merged = [a + b for a, b in pseudo_word_merges(LLAMA2_VOCAB - len(pieces) - len(singles), space=_SPM_SPACE)]
    pieces += [(text, -float(rank), NORMAL) for rank, text in enumerate([*merged, *singles])]
    model = bpe_model_bytes(pieces, unk_id=V1_UNK_ID, bos_id=V1_BOS_ID, eos_id=V1_EOS_ID)
    (folder / SENTENCEPIECE_MODEL).write_bytes(model)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 2048,
            },
            indent=2,
        )
    )
