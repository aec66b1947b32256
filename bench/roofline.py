"""The generation roofline: memory bandwidth / bytes of weights read per generated token.

Each generated token runs every matrix once, so it reads all tensor data. With tied
embeddings the token_embd matrix is the output projection too: it is read in full once.
With a separate output matrix, the embedding lookup reads one row of token_embd only.
The KV cache read (a few cells per layer at llama-bench's depths) is left out.
"""

from __future__ import annotations

from mllm_cpu.convert.gguf_header import GGUFHeader

EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"


def bytes_per_token(header: GGUFHeader) -> int:
    """Tensor bytes one generated token reads."""
    tensors = {t.name: t for t in header.tensors}
    total = sum(t.n_bytes for t in header.tensors)
    embedding = tensors.get(EMBEDDING)
    if embedding is not None and OUTPUT in tensors:
        rows = embedding.shape[1] if len(embedding.shape) > 1 else 1
        total -= embedding.n_bytes - embedding.n_bytes // rows
    return total


def roofline_tokens_per_second(bandwidth_bytes_per_second: float, token_bytes: int) -> float:
    """The generation speed if every byte moved at the measured bandwidth."""
    return bandwidth_bytes_per_second / token_bytes if token_bytes > 0 else 0.0
