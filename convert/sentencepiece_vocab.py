"""The SentencePiece vocabulary of a MobileLLM v1 checkpoint (`tokenizer.model`), as GGUF `llama` tokenizer keys.

`sentencepiece` loads the model (anything it cannot load is not a SentencePiece model) and gives
pieces, scores and the unknown/control/byte/unused kinds; the user-defined kind and the
normalizer and trainer settings that decide whether llama.cpp's SPM tokenizer matches are read
from the model's protobuf fields directly (sentencepiece's Python API exposes neither, and
protobuf is not a dependency); `bpe_model_bytes` writes such a model (the synthetic v1 checkpoints').
`sentencepiece` is imported only in `read_sentencepiece`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import MIB

from .checkpoint_files import TOKENIZER_CONFIG, read_json_object, wrong_type
from .tokenizer_spec import read_chat_template

SENTENCEPIECE_MODEL = "tokenizer.model"
SENTENCEPIECE_LIMIT = 16 * MIB
"""The largest tokenizer.model read (Llama-2's 32K vocabulary is 0.5 MB)."""
# sentencepiece_model.proto: ModelProto.SentencePiece.Type, TrainerSpec.ModelType and the field numbers used here
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
_UNIGRAM, _BPE = 1, 2
_MODEL_PIECES, _MODEL_TRAINER, _MODEL_NORMALIZER = 1, 2, 3
_PIECE_TEXT, _PIECE_SCORE, _PIECE_TYPE = 1, 2, 3
_TRAINER_MODEL_TYPE, _TRAINER_VOCAB_SIZE, _TRAINER_BYTE_FALLBACK = 3, 4, 35
_TRAINER_UNK_ID, _TRAINER_BOS_ID, _TRAINER_EOS_ID = 40, 41, 42
_NORMALIZER_NAME, _NORMALIZER_DUMMY_PREFIX, _NORMALIZER_EXTRA_WHITESPACES = 1, 3, 4


@dataclass
class SentencePieceSpec:
    """A SentencePiece vocabulary as llama.cpp's `llama` (SPM) tokenizer takes it."""

    tokens: list[str]
    scores: list[float]
    token_types: list[int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    add_bos: bool = True
    add_eos: bool = False
    add_space_prefix: bool = True
    chat_template: str | None = None
    stop_ids: list[int] = field(default_factory=list)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write the tokenizer keys into a GGUF writer."""
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        for key_writer, token_id in (
            (writer.add_bos_token_id, self.bos_id),
            (writer.add_eos_token_id, self.eos_id),
            (writer.add_unk_token_id, self.unk_id),
        ):
            if token_id is not None:
                key_writer(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_sentencepiece(folder: Path, n_vocab: int) -> SentencePieceSpec:
    """Read tokenizer.model (and tokenizer_config.json) of a v1 checkpoint; one InputError line for bad input."""
    import sentencepiece

    path = folder / SENTENCEPIECE_MODEL
    if not path.is_file():
        raise InputError(f"{folder}: {SENTENCEPIECE_MODEL} is missing (the SentencePiece vocabulary of MobileLLM v1)")
    data = path.read_bytes()[: SENTENCEPIECE_LIMIT + 1]
    if len(data) > SENTENCEPIECE_LIMIT:
        raise InputError(f"{path}: larger than {SENTENCEPIECE_LIMIT // MIB} MiB, not a SentencePiece vocabulary")
    try:
        proto = _ModelFields.parse(data)
        processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, ValueError, IndexError, struct.error):
        raise InputError(f"{path}: not a SentencePiece model") from None
    size = processor.vocab_size()
    if size != n_vocab or len(proto.piece_types) != size:
        raise InputError(f"{path}: {size} pieces, but the model's embedding has {n_vocab} rows")
    if proto.model_type != _BPE:
        raise InputError(f"{path}: a unigram SentencePiece model; llama.cpp's SPM tokenizer matches BPE models only")
    if proto.normalizer not in ("identity", ""):
        raise InputError(f"{path}: normalization {proto.normalizer!r} is not supported (llama.cpp does none)")
    if proto.remove_extra_whitespaces:
        raise InputError(f"{path}: remove_extra_whitespaces is not supported (llama.cpp keeps whitespace runs)")
    tokens, scores, types = [], [], []
    for token_id in range(size):
        tokens.append(processor.IdToPiece(token_id))
        scores.append(float(processor.GetScore(token_id)))
        kind = gguf.TokenType.NORMAL
        if processor.IsUnknown(token_id):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(token_id):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(token_id):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(token_id):
            kind = gguf.TokenType.BYTE
        elif proto.piece_types[token_id] == USER_DEFINED:
            kind = gguf.TokenType.USER_DEFINED
        types.append(int(kind))
    config_path = folder / TOKENIZER_CONFIG
    config = read_json_object(config_path, required=False)

    def flag(key: str, default: bool) -> bool:
        value = config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise wrong_type(config_path, key, "true or false", value)
        return value

    def special(token_id: int) -> int | None:
        return token_id if 0 <= token_id < size else None

    bos, eos = special(processor.bos_id()), special(processor.eos_id())
    return SentencePieceSpec(
        tokens=tokens,
        scores=scores,
        token_types=types,
        bos_id=bos,
        eos_id=eos,
        unk_id=special(processor.unk_id()),
        add_bos=flag("add_bos_token", True),
        add_eos=flag("add_eos_token", False),
        add_space_prefix=proto.add_dummy_prefix,
        chat_template=read_chat_template(folder, config),
        stop_ids=[eos] if eos is not None else [],
    )


@dataclass
class _ModelFields:
    """The few ModelProto fields sentencepiece's API does not show (sentencepiece_model.proto numbering)."""

    piece_types: list[int]
    model_type: int = _UNIGRAM  # the proto default
    normalizer: str = ""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True

    @classmethod
    def parse(cls, data: bytes) -> _ModelFields:
        fields = cls(piece_types=[])
        for number, value in _fields(data):
            if number == _MODEL_PIECES and isinstance(value, bytes):
                kinds = [v for n, v in _fields(value) if n == _PIECE_TYPE]
                fields.piece_types.append(int(kinds[-1]) if kinds else NORMAL)
            elif number == _MODEL_TRAINER and isinstance(value, bytes):
                fields.model_type = next((int(v) for n, v in _fields(value) if n == _TRAINER_MODEL_TYPE), _UNIGRAM)
            elif number == _MODEL_NORMALIZER and isinstance(value, bytes):
                for n, v in _fields(value):
                    if n == _NORMALIZER_NAME and isinstance(v, bytes):
                        fields.normalizer = v.decode("utf-8", "replace")
                    elif n == _NORMALIZER_DUMMY_PREFIX:
                        fields.add_dummy_prefix = bool(v)
                    elif n == _NORMALIZER_EXTRA_WHITESPACES:
                        fields.remove_extra_whitespaces = bool(v)
        if not fields.piece_types:
            raise ValueError("no pieces")
        return fields


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """The (field number, value) pairs of one protobuf message: ints, or bytes for length-delimited fields."""
    out: list[tuple[int, Any]] = []
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        value: int | float | bytes
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = struct.unpack_from("<d", data, at)[0], at + 8
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError("truncated field")
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = struct.unpack_from("<f", data, at)[0], at + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, value))
    return out


def bpe_model_bytes(pieces: list[tuple[str, float, int]], *, unk_id: int, bos_id: int, eos_id: int) -> bytes:
    """A serialized BPE ModelProto with byte fallback and Llama-2's normalizer settings (identity, a dummy
    prefix, whitespace kept): the kind of tokenizer.model `read_sentencepiece` takes.

    `pieces` are (text, score, type) in id order; the byte pieces <0x00>..<0xFF> must be among them.
    """
    model = b"".join(
        _message(_MODEL_PIECES, _text(_PIECE_TEXT, text) + _float(_PIECE_SCORE, score) + _int(_PIECE_TYPE, kind))
        for text, score, kind in pieces
    )
    trainer = (
        _int(_TRAINER_MODEL_TYPE, _BPE)
        + _int(_TRAINER_VOCAB_SIZE, len(pieces))
        + _int(_TRAINER_BYTE_FALLBACK, 1)
        + _int(_TRAINER_UNK_ID, unk_id)
        + _int(_TRAINER_BOS_ID, bos_id)
        + _int(_TRAINER_EOS_ID, eos_id)
    )
    normalizer = (
        _text(_NORMALIZER_NAME, "identity") + _int(_NORMALIZER_DUMMY_PREFIX, 1) + _int(_NORMALIZER_EXTRA_WHITESPACES, 0)
    )
    return model + _message(_MODEL_TRAINER, trainer) + _message(_MODEL_NORMALIZER, normalizer)


def _encoded_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    """A non-negative varint field (wire type 0)."""
    return _encoded_varint(number << 3) + _encoded_varint(value)


def _float(number: int, value: float) -> bytes:
    return _encoded_varint(number << 3 | 5) + struct.pack("<f", value)


def _message(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2): a nested message or a string's bytes."""
    return _encoded_varint(number << 3 | 2) + _encoded_varint(len(data)) + data


def _text(number: int, text: str) -> bytes:
    return _message(number, text.encode())
