"""What to sample with: `SamplingOptions` declares the sampling settings and their defaults once.

The command-line flags, a batch's recorded settings and the server's request defaults are derived
from its fields; a model file may set some of them (`SAMPLING_KEYS`). How a token is picked is
`mllm_cpu/token_sampler.py` (numpy), which the commands' help and option checks do not import.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy

DEFAULT_MAX_TOKENS = 8192
"""Most tokens a generation writes unless told otherwise (`--max-tokens`, a request's `max_tokens`)."""


@dataclass
class SamplingOptions:
    """Sampling settings; the defaults suit a small reasoning model.

    `logit_bias` maps token ids to values added to their logits before sampling.
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    logit_bias: dict[int, float] = field(default_factory=dict)


SAMPLING_KEYS = {
    "temperature": gguf.Keys.General.SAMPLING_TEMP,
    "top_p": gguf.Keys.General.SAMPLING_TOP_P,
    "top_k": gguf.Keys.General.SAMPLING_TOP_K,
    "min_p": gguf.Keys.General.SAMPLING_MIN_P,
    "repeat_penalty": gguf.Keys.General.SAMPLING_PENALTY_REPEAT,
}
"""The GGUF key (`general.sampling.*`) of each field a model file may set."""
FILE_FIELDS = tuple(SAMPLING_KEYS)
"""The fields a model file may set; the server fills a request's unset ones with the file's values."""
SCALAR_FIELDS = tuple(f.name for f in fields(SamplingOptions) if f.name != "logit_bias")
"""Every field but the logit bias, one value each: what the command-line flags set and a batch records."""


def sampling_defaults(metadata: dict[str, Any]) -> SamplingOptions:
    """SamplingOptions with the file's `general.sampling.*` values where present."""
    options = SamplingOptions()
    types = {f.name: type(getattr(options, f.name)) for f in fields(options)}
    for name, key in SAMPLING_KEYS.items():
        value = metadata.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(options, name, types[name](value))
    return options
