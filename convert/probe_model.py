"""A tiny quantized GGUF for probing llama.cpp's CPU kernels (written in milliseconds, no checkpoint).

Its weight matrices are Q8_0 and Q4_0 with shapes that llama.cpp's AMX and CPU_REPACK buffer
types both take (multiples of 32 rows and 256 columns), so loading it places weights exactly
where a real quantized model's would go, and one batched decode runs those kernels.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

PROBE_DIMS = {"n_layer": 2, "n_embd": 256, "n_ff": 512, "n_head": 4, "n_head_kv": 2, "n_vocab": 256}
"""The probe model's shapes: the smallest that every repacking kernel accepts."""


def write_probe_model(path: Path, seed: int = 0) -> Path:
    """Write the probe model (llama architecture, SentencePiece-style vocabulary of 256 tokens)."""
    dims = PROBE_DIMS
    head_dim = dims["n_embd"] // dims["n_head"]
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("mllm-cpu kernel probe")
    writer.add_block_count(dims["n_layer"])
    writer.add_context_length(256)
    writer.add_embedding_length(dims["n_embd"])
    writer.add_feed_forward_length(dims["n_ff"])
    writer.add_head_count(dims["n_head"])
    writer.add_head_count_kv(dims["n_head_kv"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *(f"t{i}" for i in range(3, dims["n_vocab"]))])
    writer.add_token_scores([0.0] * dims["n_vocab"])
    control = int(gguf.TokenType.CONTROL)
    writer.add_token_types([int(gguf.TokenType.UNKNOWN), control, control] + [1] * (dims["n_vocab"] - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def add(name: str, shape: tuple[int, ...], kind: gguf.GGMLQuantizationType | None = None) -> None:
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if kind is None:
            writer.add_tensor(name, values if len(shape) > 1 else np.ones(shape, dtype=np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
    embd, ff, kv = dims["n_embd"], dims["n_ff"], dims["n_head_kv"] * head_dim
    add("token_embd.weight", (dims["n_vocab"], embd), q8)
    add("output_norm.weight", (embd,))
    for layer in range(dims["n_layer"]):
        block = f"blk.{layer}"
        add(f"{block}.attn_norm.weight", (embd,))
        add(f"{block}.attn_q.weight", (embd, embd), q8)
        add(f"{block}.attn_k.weight", (kv, embd), q8)
        add(f"{block}.attn_v.weight", (kv, embd), q8)
        add(f"{block}.attn_output.weight", (embd, embd), q4)
        add(f"{block}.ffn_norm.weight", (embd,))
        add(f"{block}.ffn_gate.weight", (ff, embd), q4)
        add(f"{block}.ffn_up.weight", (ff, embd), q4)
        add(f"{block}.ffn_down.weight", (embd, ff), q4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
