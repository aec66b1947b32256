"""The quantization levels `convert` offers, and how each is produced."""

from __future__ import annotations

from dataclasses import dataclass

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy
from mllm_cpu.core.values import comma_list


@dataclass(frozen=True)
class QuantLevel:
    """A file type: written directly by gguf-py, or produced by llama.cpp's quantizer."""

    name: str
    file_type: gguf.LlamaFileType
    matrix_type: gguf.GGMLQuantizationType
    direct: bool

    @property
    def label(self) -> str:
        """The name as it appears in file names, e.g. Q4_K_M."""
        return self.name.upper()


_F = gguf.LlamaFileType
_T = gguf.GGMLQuantizationType
QUANT_LEVELS: dict[str, QuantLevel] = {
    level.name: level
    for level in (
        QuantLevel("f32", _F.ALL_F32, _T.F32, True),
        QuantLevel("f16", _F.MOSTLY_F16, _T.F16, True),
        QuantLevel("bf16", _F.MOSTLY_BF16, _T.BF16, True),
        QuantLevel("q8_0", _F.MOSTLY_Q8_0, _T.Q8_0, True),
        QuantLevel("q6_k", _F.MOSTLY_Q6_K, _T.Q6_K, False),
        QuantLevel("q5_k_m", _F.MOSTLY_Q5_K_M, _T.Q5_K, False),
        QuantLevel("q5_k_s", _F.MOSTLY_Q5_K_S, _T.Q5_K, False),
        QuantLevel("q5_1", _F.MOSTLY_Q5_1, _T.Q5_1, False),
        QuantLevel("q5_0", _F.MOSTLY_Q5_0, _T.Q5_0, False),
        QuantLevel("q4_k_m", _F.MOSTLY_Q4_K_M, _T.Q4_K, False),
        QuantLevel("q4_k_s", _F.MOSTLY_Q4_K_S, _T.Q4_K, False),
        QuantLevel("q4_1", _F.MOSTLY_Q4_1, _T.Q4_1, False),
        QuantLevel("q4_0", _F.MOSTLY_Q4_0, _T.Q4_0, False),
        QuantLevel("iq4_nl", _F.MOSTLY_IQ4_NL, _T.IQ4_NL, False),
        QuantLevel("iq4_xs", _F.MOSTLY_IQ4_XS, _T.IQ4_XS, False),
        QuantLevel("q3_k_l", _F.MOSTLY_Q3_K_L, _T.Q3_K, False),
        QuantLevel("q3_k_m", _F.MOSTLY_Q3_K_M, _T.Q3_K, False),
        QuantLevel("q3_k_s", _F.MOSTLY_Q3_K_S, _T.Q3_K, False),
        QuantLevel("q2_k", _F.MOSTLY_Q2_K, _T.Q2_K, False),
    )
}
DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")

EMBEDDING_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    t.name.lower(): t
    for t in (
        _T.F32,
        _T.F16,
        _T.BF16,
        _T.Q8_0,
        _T.Q6_K,
        _T.Q5_K,
        _T.Q5_0,
        _T.Q5_1,
        _T.Q4_K,
        _T.Q4_0,
        _T.Q4_1,
        _T.IQ4_NL,
        _T.IQ4_XS,
        _T.Q3_K,
        _T.Q2_K,
    )
}


def parse_quant_list(text: str) -> list[QuantLevel]:
    """Parse a comma list such as "f16,q8_0,q4_k_m" (case-insensitive, no duplicates)."""
    names = [name.lower() for name in comma_list(text)]
    if not names:
        raise InputError("--quant is empty; choose from: " + ", ".join(QUANT_LEVELS))
    unknown = [n for n in names if n not in QUANT_LEVELS]
    if unknown:
        raise InputError(f"unknown quant type {', '.join(unknown)}; choose from: {', '.join(QUANT_LEVELS)}")
    return [QUANT_LEVELS[n] for n in dict.fromkeys(names)]


def parse_embedding_type(text: str | None) -> gguf.GGMLQuantizationType | None:
    """Parse --embedding-type (a ggml tensor type name such as q4_0 or q6_k)."""
    if text is None:
        return None
    key = text.strip().lower()
    if key not in EMBEDDING_TYPES:
        raise InputError(f"unknown embedding type {text}; choose from: {', '.join(EMBEDDING_TYPES)}")
    return EMBEDDING_TYPES[key]
