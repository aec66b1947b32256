"""Make a random-weight model write a chosen text, through llama.cpp's real sampler chain.

Each token of the text gets a logit bias larger than the next one's, and a huge repeat
penalty pushes every token already written below the rest; greedy sampling then writes the
text token by token and ends with the end-of-turn token. Works for texts whose tokens are
all different.
"""

from __future__ import annotations

from dataclasses import replace

from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions

EOT_ID = 128009
_TOP_BIAS = 10_000.0
_STEP = 100.0


def forcing_options(engine: Engine, text: str, base: SamplingOptions | None = None) -> SamplingOptions:
    """SamplingOptions under which `engine` generates exactly `text`, then stops at <|eot_id|>."""
    tokens = engine.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{text!r} repeats a token; it cannot be forced this way")
    bias = {token: _TOP_BIAS - _STEP * index for index, token in enumerate([*tokens, EOT_ID])}
    return replace(
        base or SamplingOptions(),
        temperature=0.0,
        repeat_penalty=_TOP_BIAS,
        logit_bias=bias,
        max_tokens=len(tokens) + 8,
    )
