"""The MobileLLM-R1 hyperparameters read from a Hugging Face config.json, validated."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mllm_cpu.core.errors import InputError

from .checkpoint_files import CONFIG, integer, plain, read_json_object, shown, wrong_type
from .layout import GGUF_ARCHITECTURE, V1_GGUF_ARCHITECTURE

V1_HF_CLASS = "MobileLLMForCausalLM"
"""MobileLLM v1 (125M-1.5B and the -layer-share variants): a Llama with shared embeddings, remote code."""
SUPPORTED_HF_CLASSES = ("Llama4ForCausalLM", V1_HF_CLASS)
"""Hugging Face model classes (config.json `architectures`) the converter reads."""
SOURCE_ARCHITECTURE_LABEL = "MobileLLM-R1 (Llama4 dense)"
V1_SOURCE_LABEL = "MobileLLM v1"


@dataclass(frozen=True)
class ModelSpec:
    """The shape and numerics of a dense MobileLLM-R1 (Llama4 text) model."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    rope_theta: float
    rms_norm_eps: float
    tied_embeddings: bool
    architecture: str = "Llama4ForCausalLM"
    layer_repeat: int = 1
    """2 for MobileLLM v1's layer sharing: each checkpoint block runs twice (n_layer counts the runs)."""

    @property
    def is_v1(self) -> bool:
        """True for MobileLLM v1 (run as llama), False for MobileLLM-R1 (run as qwen3)."""
        return self.architecture == V1_HF_CLASS

    @property
    def gguf_architecture(self) -> str:
        """The llama.cpp graph the model runs as."""
        return V1_GGUF_ARCHITECTURE if self.is_v1 else GGUF_ARCHITECTURE

    @property
    def source_label(self) -> str:
        """The family's name, as `info` and `models` show it."""
        return V1_SOURCE_LABEL if self.is_v1 else SOURCE_ARCHITECTURE_LABEL

    @property
    def parameter_count(self) -> int:
        """Parameters of the converted model as llama.cpp counts them.

        Norms included (the per-head q/k norm weights too), tied embeddings counted once.
        """
        attention = self.n_embd * self.head_dim * (2 * self.n_head + 2 * self.n_head_kv)
        mlp = 3 * self.n_embd * self.n_ff
        layer = attention + mlp + 2 * self.n_embd + (0 if self.is_v1 else 2 * self.head_dim)
        embeddings = self.n_vocab * self.n_embd * (1 if self.tied_embeddings else 2)
        return self.n_layer * layer + embeddings + self.n_embd

    def to_config(self, **token_ids: Any) -> dict[str, Any]:
        """A config.json dict in the form the family's checkpoints ship (MobileLLM-R1's or MobileLLM v1's)."""
        shape = {
            "hidden_size": self.n_embd,
            "intermediate_size": self.n_ff,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head_kv,
            "head_dim": self.head_dim,
            "vocab_size": self.n_vocab,
            "max_position_embeddings": self.n_ctx,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
        }
        if self.is_v1:
            return {
                "architectures": [V1_HF_CLASS],
                "model_type": "mobilellm",
                **shape,
                "num_hidden_layers": self.n_layer // self.layer_repeat,
                "rope_scaling": None,
                "hidden_act": "silu",
                "attention_bias": False,
                "mlp_bias": False,
                "tie_word_embeddings": False,
                "share_embedding": self.tied_embeddings,
                "layer_sharing": self.layer_repeat > 1,
                "torch_dtype": "bfloat16",
                **token_ids,
            }
        return {
            "architectures": [self.architecture],
            "model_type": "llama4_text",
            **shape,
            "intermediate_size_mlp": self.n_ff,
            "num_hidden_layers": self.n_layer,
            "tie_word_embeddings": self.tied_embeddings,
            "num_local_experts": 0,
            "interleave_moe_layer_step": 0,
            "moe_layers": [],
            "no_rope_layers": [1] * self.n_layer,
            "use_qk_norm": True,
            "attn_temperature_tuning": False,
            "attention_chunk_size": self.n_ctx,
            "layer_types": ["full_attention"] * self.n_layer,
            "torch_dtype": "bfloat16",
            **token_ids,
        }


def read_config(folder: Path) -> dict[str, Any]:
    """Load config.json of a checkpoint folder (a regular file of at most FILE_LIMITS[CONFIG] bytes)."""
    path = folder / CONFIG
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a Hugging Face checkpoint folder)")
    if not path.exists():
        raise InputError(f"{folder}: config.json is missing (expected a Hugging Face checkpoint folder)")
    return read_json_object(path)


def spec_from_config(config: dict[str, Any], where: str = "config.json") -> ModelSpec:
    """Validate a config.json dict and return the model's spec.

    Every value is checked for its type, and every dimension against DIMENSION_LIMITS, so
    nothing is sized by a value before it is known to be sane.
    """
    architectures = config.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    ):
        raise wrong_type(where, "architectures", "a list of class names", architectures)
    architecture = (architectures or [config.get("model_type", "unknown")])[0]
    if architecture not in SUPPORTED_HF_CLASSES:
        raise InputError(
            f"{where}: unsupported architecture {plain(architecture)}; supported: "
            f"{', '.join(SUPPORTED_HF_CLASSES)} (MobileLLM-R1 140M/360M/950M, MobileLLM v1 125M-1.5B)"
        )
    if architecture == V1_HF_CLASS:
        return _v1_spec(config, where)
    text = config.get("text_config", config)
    if not isinstance(text, dict):
        raise wrong_type(where, "text_config", "an object", text)
    if text.get("num_local_experts", 0) or text.get("moe_layers") or text.get("interleave_moe_layer_step", 0):
        raise InputError(
            f"{where}: this Llama4 checkpoint has experts (MoE); only dense MobileLLM-R1 models are supported"
        )
    n_head = _positive(text, "num_attention_heads", where)
    n_embd = _positive(text, "hidden_size", where)
    rope_parameters = _object(text, "rope_parameters", where)
    tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings"))
    spec = ModelSpec(
        n_layer=_positive(text, "num_hidden_layers", where),
        n_embd=n_embd,
        n_ff=_positive(
            text, "intermediate_size_mlp" if text.get("intermediate_size_mlp") else "intermediate_size", where
        ),
        n_head=n_head,
        n_head_kv=_positive(text, "num_key_value_heads", where, n_head),
        head_dim=_positive(text, "head_dim", where, n_embd // n_head),
        n_vocab=_positive(text, "vocab_size", where),
        n_ctx=_positive(text, "max_position_embeddings", where, 4096),
        rope_theta=_positive(text, "rope_theta", where, rope_parameters.get("rope_theta"), kind=float),
        rms_norm_eps=_positive(text, "rms_norm_eps", where, 1e-5, kind=float),
        tied_embeddings=_flag("tie_word_embeddings", tied, where, default=True),
        architecture=architecture,
    )
    _check_supported_numerics(text, spec, where)
    return spec


DIMENSION_LIMITS: dict[str, int] = {
    "num_hidden_layers": 1024,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "intermediate_size_mlp": 1 << 20,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "vocab_size": 1 << 18,
    "max_position_embeddings": 1 << 24,
}
"""The largest value taken for each config.json dimension: far above MobileLLM-R1's (the 950M
has 22 layers, width 1536, 128256 tokens, a 32768-token context), low enough that nothing
sized by them (the tensor list, the token table) can exhaust memory."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""GGUF stores rope_theta and rms_norm_eps as 32-bit floats."""


def _positive(text: dict[str, Any], key: str, where: str, default: Any = None, kind: type = int) -> Any:
    """`text[key]` (or `default` when absent or null) as a positive int (at most its DIMENSION_LIMITS
    entry) or a positive float that fits 32 bits.

    Anything else is one InputError that names the key and the value.
    """
    value = text.get(key)
    value = default if value is None else value
    if value is None:
        raise InputError(f"{where}: {key} is missing")
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not number or value <= 0 or (kind is int and value != int(value)):
        wanted = "a positive integer" if kind is int else "a positive number"
        raise wrong_type(where, key, wanted, value)
    limit = DIMENSION_LIMITS[key] if kind is int else FLOAT32_MAX
    if value > limit:
        raise InputError(f"{where}: {key} must be at most {limit:g}, got {shown(value)}")
    return kind(value)


def _object(text: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """`text[key]` as an object ({} when absent or null)."""
    value = text.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise wrong_type(where, key, "an object", value)
    return value


def _flag(key: str, value: Any, where: str, default: bool) -> bool:
    """A true/false value (0 and 1 too); `default` when absent or null."""
    if value is None:
        return default
    if value not in (True, False) or not isinstance(value, (bool, int)):
        raise wrong_type(where, key, "true or false", value)
    return bool(value)


def _check_supported_numerics(text: dict[str, Any], spec: ModelSpec, where: str) -> None:
    if spec.n_head % spec.n_head_kv:
        raise InputError(f"{where}: {spec.n_head} attention heads is not a multiple of {spec.n_head_kv} KV heads")
    if spec.head_dim % 2:
        raise InputError(f"{where}: head_dim {spec.head_dim} must be even for RoPE")
    if not _flag("use_qk_norm", text.get("use_qk_norm"), where, default=True):
        raise InputError(f"{where}: use_qk_norm false is not supported (MobileLLM-R1 uses it)")
    no_rope = text.get("no_rope_layers")
    if no_rope is not None and not (isinstance(no_rope, list) and all(v in (0, 1) and integer(v) for v in no_rope)):
        raise wrong_type(where, "no_rope_layers", "a list of 0 or 1 per layer", no_rope)
    if no_rope and not all(v == 1 for v in no_rope):
        raise InputError(f"{where}: layers without RoPE are not supported (MobileLLM-R1 uses RoPE on every layer)")
    if _flag("attn_temperature_tuning", text.get("attn_temperature_tuning"), where, default=False):
        raise InputError(f"{where}: attn_temperature_tuning is not supported")
    for key in ("rope_scaling", "rope_parameters"):
        rope = _object(text, key, where)
        kind = rope.get("rope_type", rope.get("type", "default"))
        if rope and kind != "default":
            raise InputError(f"{where}: RoPE scaling ({plain(kind)}) is not supported")
    chunk = text.get("attention_chunk_size")
    if chunk is not None and not (integer(chunk) and chunk > 0):
        raise wrong_type(where, "attention_chunk_size", "a positive integer", chunk)
    if chunk and chunk < spec.n_ctx:
        raise InputError(f"{where}: chunked attention ({chunk} < context {spec.n_ctx}) is not supported")
    # chunked attention with chunks at least as long as the context is full attention
    layer_types = text.get("layer_types")
    if layer_types is not None and not (isinstance(layer_types, list) and all(isinstance(t, str) for t in layer_types)):
        raise wrong_type(where, "layer_types", "a list of attention types", layer_types)
    other = sorted(set(layer_types or []) - {"full_attention", "chunked_attention"})
    if other:
        raise InputError(
            f"{where}: attention layer type {', '.join(map(plain, other))} is not supported (only full attention)"
        )


def _v1_spec(config: dict[str, Any], where: str) -> ModelSpec:
    """A MobileLLM v1 config.json (LlamaConfig plus `share_embedding` and `layer_sharing`), validated.

    `share_embedding` decides the tie (the checkpoints say `tie_word_embeddings: false` and hold no
    lm_head); with `layer_sharing` each of the `num_hidden_layers` blocks runs twice.
    """
    n_head = _positive(config, "num_attention_heads", where)
    n_embd = _positive(config, "hidden_size", where)
    shared = config.get("share_embedding")
    tied = (
        _flag("share_embedding", shared, where, default=True)
        if shared is not None
        else _flag("tie_word_embeddings", config.get("tie_word_embeddings"), where, default=True)
    )
    sharing = _flag("layer_sharing", config.get("layer_sharing"), where, default=False)
    blocks = _positive(config, "num_hidden_layers", where)
    spec = ModelSpec(
        n_layer=blocks * (2 if sharing else 1),
        n_embd=n_embd,
        n_ff=_positive(config, "intermediate_size", where),
        n_head=n_head,
        n_head_kv=_positive(config, "num_key_value_heads", where, n_head),
        head_dim=_positive(config, "head_dim", where, n_embd // n_head),
        n_vocab=_positive(config, "vocab_size", where),
        n_ctx=_positive(config, "max_position_embeddings", where, 2048),
        rope_theta=_positive(config, "rope_theta", where, 10000.0, kind=float),
        rms_norm_eps=_positive(config, "rms_norm_eps", where, 1e-5, kind=float),
        tied_embeddings=tied,
        architecture=V1_HF_CLASS,
        layer_repeat=2 if sharing else 1,
    )
    if spec.n_head % spec.n_head_kv:
        raise InputError(f"{where}: {spec.n_head} attention heads is not a multiple of {spec.n_head_kv} KV heads")
    if spec.head_dim % 2:
        raise InputError(f"{where}: head_dim {spec.head_dim} must be even for RoPE")
    for key in ("attention_bias", "mlp_bias"):
        if _flag(key, config.get(key), where, default=False):
            raise InputError(f"{where}: {key} true is not supported (MobileLLM v1 has no biases)")
    if config.get("hidden_act", "silu") != "silu":
        raise InputError(f"{where}: hidden_act {plain(config.get('hidden_act'))} is not supported (SwiGLU uses silu)")
    rope = _object(config, "rope_scaling", where)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if rope and kind != "default":
        raise InputError(f"{where}: RoPE scaling ({plain(kind)}) is not supported")
    return spec
