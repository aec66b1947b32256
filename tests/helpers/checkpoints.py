"""Tiny, random, real MobileLLM-R1-style Hugging Face checkpoints for tests.

A checkpoint built here is a genuine `transformers.Llama4ForCausalLM` (model_type
`llama4_text`, dense, qk-norm, RoPE on every layer) with random weights, saved with
`save_pretrained` next to a small byte-level BPE tokenizer laid out like Llama 3's.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Llama4ForCausalLM, Llama4TextConfig

Dtype = Literal["float32", "bfloat16", "float16"]
ConfigStyle = Literal["hub", "transformers"]

LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TINY_VOCAB_SIZE = 1024
NUM_SPECIAL_TOKENS = 256
BPE_VOCAB_SIZE = TINY_VOCAB_SIZE - NUM_SPECIAL_TOKENS


def _llama31_special_tokens() -> list[str]:
    """Llama 3.1's 256 special tokens, in id order."""
    named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ]
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(3, NUM_SPECIAL_TOKENS - len(named) + 3)]
    return named + reserved


SPECIAL_TOKENS: list[str] = _llama31_special_tokens()
SPECIAL_TOKEN_IDS: dict[str, int] = {token: BPE_VOCAB_SIZE + index for index, token in enumerate(SPECIAL_TOKENS)}
BOS_ID = SPECIAL_TOKEN_IDS["<|begin_of_text|>"]
END_OF_TEXT_ID = SPECIAL_TOKEN_IDS["<|end_of_text|>"]
EOM_ID = SPECIAL_TOKEN_IDS["<|eom_id|>"]
EOT_ID = SPECIAL_TOKEN_IDS["<|eot_id|>"]
EOS_IDS: list[int] = [END_OF_TEXT_ID, EOM_ID, EOT_ID]

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

ROPE_THETA = 8_000_000.0
RMS_NORM_EPS = 1e-5
HEAD_DIM = 64


@dataclass(frozen=True)
class TinyShape:
    """Dimensions of a tiny MobileLLM-R1-style model."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = HEAD_DIM
    vocab_size: int = TINY_VOCAB_SIZE
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True


TINY = TinyShape(
    hidden_size=192, intermediate_size=256, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1
)
TINY_GQA2 = TinyShape(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
TINY_UNTIED = TinyShape(
    hidden_size=128,
    intermediate_size=320,
    num_hidden_layers=5,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
TINY_MHA = TinyShape(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
)
PRESETS: dict[str, TinyShape] = {
    "tiny": TINY,
    "tiny_gqa2": TINY_GQA2,
    "tiny_untied": TINY_UNTIED,
    "tiny_mha": TINY_MHA,
}

# ruff: noqa: E501  (training text keeps its natural lines)
_TRAINING_TEXT = r"""
The quick brown fox jumps over the lazy dog. She said it's fine, they're here, we've won, I'm done, you'll see, he'd know.
Reasoning models solve problems step by step. First, read the question carefully. Then write down what is known.
Please reason step by step, and put your final answer within \boxed{}.
You are a helpful and harmless assistant. You should think step-by-step before responding.
Small language models can run on phones, laptops and a Raspberry Pi with a few hundred megabytes of memory.
The tokenizer splits text into words, numbers and punctuation before merging bytes into tokens.
In 2025 the model was trained on 4.2 trillion tokens; the largest one has 949,688,576 parameters.
Let $x$ be a real number such that $x^2 - 5x + 6 = 0$. Then $(x-2)(x-3) = 0$, so $x = 2$ or $x = 3$.
The sum of the first $n$ positive integers is $\frac{n(n+1)}{2}$, hence $1 + 2 + \cdots + 100 = 5050$.
We compute $\int_0^1 x^2\,dx = \frac{1}{3}$ and $\sum_{k=1}^{\infty} \frac{1}{k^2} = \frac{\pi^2}{6}$.
If $a \equiv 3 \pmod{7}$ then $a^2 \equiv 2 \pmod{7}$. Therefore the answer is $\boxed{2}$.
The area of a circle of radius $r$ is $\pi r^2$; with $r = 3$ we get $9\pi \approx 28.274$.
Since $\sqrt{144} = 12$ and $12 \times 12 = 144$, the final answer is \boxed{12}.
Solve for $y$: $\frac{3y}{4} - \frac{y}{2} = 5 \implies \frac{y}{4} = 5 \implies y = 20$.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b


class Solution:
    def two_sum(self, nums: list[int], target: int) -> list[int]:
        seen = {}
        for index, value in enumerate(nums):
            if target - value in seen:
                return [seen[target - value], index]
            seen[value] = index
        return []


if __name__ == "__main__":
    print(fibonacci(10), Solution().two_sum([2, 7, 11, 15], 9))
#include <iostream>
#include <vector>

int main() {
	std::vector<int> values = {3, 1, 4, 1, 5, 9, 2, 6};
	long long total = 0;
	for (int v : values) {
		total += v;
	}
	std::cout << "total = " << total << std::endl;
	return 0;
}
Café, naïve, façade, résumé, jalapeño, Ångström, Straße, über, crème brûlée, São Paulo, Dvořák.
日本語の文章を書きます。東京は日本の首都です。中文也可以：你好，世界！数学很有趣。한국어 문장도 있습니다.
Emoji: 😀 🚀 🎉 👍🏽 ❤️ 🧮 — and symbols like → ≤ ≥ ≠ ∞ ∑ ∫ √ π ° € £ ¥.
Русский текст: привет, мир. Ελληνικά: γειά σου κόσμε. العربية: مرحبا بالعالم. עברית: שלום עולם.
Numbers: 0 1 12 123 1234 12345 123456 3.14159 2.71828 -42 1e-5 8000000 128256 0xFF 0b1010.
    Indented line with four spaces.
		Two tabs here.
Trailing spaces   and   multiple   gaps.


Blank lines above, then JSON: {"name": "tiny", "layers": 3, "ok": true, "items": [1, 2, 3]}.
Markdown: # Title, **bold**, _italic_, `code`, - item one, - item two, > quote, [link](https://example.com).
```python
# Your code here
print("hello, world")
```
```cpp
// Your code here
int add(int a, int b) { return a + b; }
```
"""


def _training_lines() -> list[str]:
    """The training corpus, one entry per line, repeated so common pairs dominate."""
    lines = [line for line in _TRAINING_TEXT.splitlines(keepends=True) if line.strip()]
    return lines * 3


def _new_llama3_style_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with Llama 3's pre-tokenizer and decoder."""
    tokenizer = Tokenizer(models.BPE(ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """The trained tokenizer serialized as tokenizer.json text."""
    tokenizer = _new_llama3_style_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=0,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_training_lines(), trainer=trainer)
    if tokenizer.get_vocab_size() != BPE_VOCAB_SIZE:
        raise RuntimeError(f"training produced {tokenizer.get_vocab_size()} tokens, expected {BPE_VOCAB_SIZE}")
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", BOS_ID)],
    )
    if tokenizer.get_vocab_size() != TINY_VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, expected {TINY_VOCAB_SIZE}")
    return tokenizer.to_str(pretty=True)


def _write_json(path: Path, content: object) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tokenizer(folder: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    added_tokens_decoder = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, token_id in SPECIAL_TOKEN_IDS.items()
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": added_tokens_decoder,
            "bos_token": "<|begin_of_text|>",
            "chat_template": LLAMA3_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": True,
            "eos_token": "<|eot_id|>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": {
                "content": "<|begin_of_text|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
            "eos_token": {
                "content": "<|eot_id|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
        },
    )


def load_tokenizer(folder: Path) -> Tokenizer:
    """The `tokenizers.Tokenizer` stored in folder/tokenizer.json."""
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def text_config(shape: TinyShape = TINY, **overrides: object) -> Llama4TextConfig:
    """A dense MobileLLM-R1-style `Llama4TextConfig` for shape; overrides replace any kwarg."""
    layers = shape.num_hidden_layers
    kwargs: dict[str, object] = {
        "architectures": ["Llama4ForCausalLM"],
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "intermediate_size_mlp": shape.intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": RMS_NORM_EPS,
        "bos_token_id": BOS_ID,
        "eos_token_id": list(EOS_IDS),
        "pad_token_id": None,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "num_local_experts": 0,
        "num_experts_per_tok": 0,
        "interleave_moe_layer_step": 0,
        "moe_layers": [],
        "use_qk_norm": True,
        "no_rope_layers": [1] * layers,
        "layer_types": ["full_attention"] * layers,
        "attention_chunk_size": shape.max_position_embeddings,
        "attn_temperature_tuning": False,
        "attn_scale": 0.1,
        "floor_scale": 8192,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
    }
    kwargs.update(overrides)
    return Llama4TextConfig(**kwargs)


_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _init_weights(model: Llama4ForCausalLM, shape: TinyShape, seed: int) -> None:
    """Fill every parameter from a seeded generator so that all parts of the model matter.

    Projections are scaled by fan-in; q/k are large so qk-norm changes the result a lot;
    attention and FFN outputs outweigh the token's own embedding so greedy decoding with
    tied embeddings does not lock onto one token; norm weights are random so swapped or
    dropped norms show; the embedding scale gives logits a spread of a few units.
    """
    generator = torch.Generator().manual_seed(seed)
    gains = {
        "q_proj": 2.5,
        "k_proj": 2.5,
        "v_proj": 1.0,
        "o_proj": 4.0,
        "gate_proj": 1.0,
        "up_proj": 1.0,
        "down_proj": 4.0,
    }
    output_std = 3.0 / math.sqrt(shape.hidden_size)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                parameter.copy_(0.6 + 0.8 * torch.rand(parameter.shape, generator=generator))
            elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                parameter.copy_(output_std * torch.randn(parameter.shape, generator=generator))
            else:
                projection = name.split(".")[-2]
                std = gains[projection] / math.sqrt(parameter.shape[1])
                parameter.copy_(std * torch.randn(parameter.shape, generator=generator))


def _max_shard_size_for(state_dict: dict[str, torch.Tensor], shards: int) -> int:
    """The smallest max_shard_size (bytes) that splits state_dict into exactly `shards` files."""

    def count(limit: int) -> int:
        return len(split_torch_state_dict_into_shards(state_dict, max_shard_size=limit).filename_to_tensors)

    low, high = 1, sum(t.numel() * t.element_size() for t in state_dict.values())
    if count(high) > shards:
        raise ValueError(f"cannot split into {shards} shards")
    while low < high:
        middle = (low + high) // 2
        if count(middle) <= shards:
            high = middle
        else:
            low = middle + 1
    if count(low) != shards:
        raise ValueError(f"no shard size splits this model into exactly {shards} shards")
    return low


def _rewrite_config_as_hub(folder: Path) -> None:
    """Rewrite config.json in the layout of the published MobileLLM-R1 files.

    Those were written by transformers 4.5x: `rope_theta` and `rope_scaling` at top level
    and `torch_dtype` instead of `rope_parameters` and `dtype`.
    """
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = None
    config["torch_dtype"] = config.pop("dtype")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_checkpoint(
    folder: Path,
    shape: TinyShape = TINY,
    *,
    dtype: Dtype = "float32",
    shards: int = 1,
    seed: int = 0,
    config_style: ConfigStyle = "hub",
) -> Path:
    """Save a random MobileLLM-R1-style checkpoint (weights, config, tokenizer) into folder.

    config_style "hub" writes config.json like the published checkpoints (rope_theta at top
    level); "transformers" keeps what the installed transformers writes (rope_parameters).
    """
    if shape.vocab_size != TINY_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be {TINY_VOCAB_SIZE} to match the tiny tokenizer")
    folder.mkdir(parents=True, exist_ok=True)
    model = Llama4ForCausalLM(text_config(shape))
    _init_weights(model, shape, seed)
    model = model.to(_TORCH_DTYPES[dtype])
    return save_checkpoint(model, folder, shards=shards, config_style=config_style)


def save_checkpoint(
    model: Llama4ForCausalLM, folder: Path, *, shards: int = 1, config_style: ConfigStyle = "hub"
) -> Path:
    """Save model with its config, generation config and the tiny tokenizer into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    max_shard_size = _max_shard_size_for(model.state_dict(), shards) if shards > 1 else "50GB"
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    if config_style == "hub":
        _rewrite_config_as_hub(folder)
    _write_json(folder / "generation_config.json", {"bos_token_id": BOS_ID, "eos_token_id": list(EOS_IDS)})
    build_tokenizer(folder)
    return folder


def _weights_fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the files a model load depends on."""
    files = sorted([*folder.glob("*.safetensors"), folder / "config.json"])
    return tuple((file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files)


@functools.lru_cache(maxsize=8)
def _load_float32(folder: str, fingerprint: tuple[tuple[str, int, int], ...]) -> Llama4ForCausalLM:
    model = Llama4ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def load_reference_model(folder: Path) -> Llama4ForCausalLM:
    """The checkpoint in folder loaded by transformers in float32 with eager attention (cached)."""
    folder = folder.resolve()
    return _load_float32(str(folder), _weights_fingerprint(folder))


def reference_logits(folder: Path, token_ids: list[int]) -> np.ndarray:
    """Float32 logits [len(token_ids), vocab] of one transformers forward pass."""
    model = load_reference_model(folder)
    with torch.no_grad():
        logits = model(torch.tensor([token_ids], dtype=torch.long)).logits
    return logits[0].to(torch.float32).numpy()


def reference_greedy(folder: Path, token_ids: list[int], n_new: int) -> list[int]:
    """The n_new tokens transformers picks greedily after token_ids; never stops at eos."""
    model = load_reference_model(folder)
    sequence = list(token_ids)
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([sequence], dtype=torch.long)).logits
            sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(token_ids) :]


TOKENIZER_CORPUS: list[str] = [
    "",
    " ",
    "Hello, world!",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Let $x = \\frac{a}{b}$ and $y = \\sqrt{x^2 + 1}$; then $\\boxed{\\frac{3}{4}}$.",
    "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$",
    "\\begin{align} f(x) &= 3x^2 - 2x + 1 \\\\ f'(x) &= 6x - 2 \\end{align}",
    "def add(a: int, b: int) -> int:\n    return a + b\n\n\nprint(add(2, 3))\n",
    "```python\n# Your code here\nclass Node:\n    def __init__(self):\n        self.next = None\n```",
    '#include <cstdio>\nint main() {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf("%d\\n", i);\n\t}\n\treturn 0;\n}\n',
    "Crème brûlée, naïve café, Ångström, Straße, Dvořák, São Paulo.",
    "東京は日本の首都です。你好，世界！안녕하세요.",
    "Emoji: 😀🚀🎉 👍🏽 ❤️ 👨‍👩‍👧‍👦 🇫🇷",
    "RTL: مرحبا بالعالم and שלום עולם mixed with English.",
    "Digits: 1 12 123 1234 12345 1234567890123456789 3.14159265358979 -0.001 1e-10 1,000,000",
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,\n\nblank line,   \n trailing spaces   ",
    "\n\n\n    \n\t\n",
    "I'm sure you'll see they've said it's HIS and we'd DON'T, SHE'LL.",
    "<|begin_of_text|>hello<|eot_id|>",
    "Text with <|start_header_id|>user<|end_header_id|> markers and <|eot_id|> inside.",
    "A fake special token <|not_a_token|> and a partial <|eot_id without its end.",
    "Mixed: x² + y² = z², α + β = γ, ∑ᵢ aᵢ ≤ ∞, 10°C ≈ 50°F, €5 > £4.",
]
