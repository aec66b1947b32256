"""Check a GGUF file before llama.cpp sees it, so a bad file is an error line, not an abort."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mllm_cpu.convert.gguf_header import GGUFHeader, read_gguf_header
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError

SUPPORTED_ARCHITECTURES = ("qwen3",)
_FIX = "convert the Hugging Face checkpoint with `mllm-cpu convert MODEL_DIR`"


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file that passed validation, with the facts the runtime needs."""

    path: Path
    header: GGUFHeader
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int

    @property
    def description(self) -> str:
        """E.g. "MobileLLM-R1 (Llama4 dense), run as qwen3"."""
        source = self.header.get(gguf_keys.SOURCE_LABEL)
        return f"{source}, run as {self.header.architecture}" if source else self.header.architecture

    @property
    def name(self) -> str:
        """general.name, or the file name."""
        return str(self.header.get("general.name") or self.path.stem)


def validate_model_file(path: Path) -> ModelFile:
    """Parse and check a GGUF: readable, a supported architecture, a tokenizer, consistent tensors."""
    return validate_header(read_gguf_header(Path(path)))


def validate_header(header: GGUFHeader) -> ModelFile:
    """Check an already parsed GGUF header (see validate_model_file)."""
    path = header.path
    arch = header.architecture
    if arch == "llama4" and not header.get("llama4.expert_count"):
        raise InputError(
            f"{path}: a llama4 file with zero experts (llama.cpp's own MobileLLM-R1 conversion), "
            f"which llama.cpp cannot load; {_FIX}"
        )
    if arch not in SUPPORTED_ARCHITECTURES:
        raise InputError(
            f"{path}: unsupported architecture {arch}; supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
            f"(MobileLLM-R1 files written by mllm-cpu convert)"
        )
    if header.get("tokenizer.ggml.model") is None or not header.array_lengths.get("tokenizer.ggml.tokens"):
        raise InputError(f"{path}: the file has no tokenizer; {_FIX}")
    try:
        n_layer = int(header.metadata[f"{arch}.block_count"])
        n_embd = int(header.metadata[f"{arch}.embedding_length"])
        n_head = int(header.metadata[f"{arch}.attention.head_count"])
        n_head_kv = int(header.get(f"{arch}.attention.head_count_kv", n_head))
        head_dim = int(header.get(f"{arch}.attention.key_length", n_embd // n_head))
        n_ff = int(header.metadata[f"{arch}.feed_forward_length"])
        n_ctx_train = int(header.metadata[f"{arch}.context_length"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: missing or invalid hyperparameter {err}") from None
    n_vocab = header.array_lengths["tokenizer.ggml.tokens"]
    _check_tensors(path, header, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab)
    return ModelFile(path, header, n_layer, n_embd, n_head, n_head_kv, head_dim, n_vocab, n_ctx_train)


def _check_tensors(
    path: Path,
    header: GGUFHeader,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    n_ff: int,
    n_vocab: int,
) -> None:
    """Every tensor the qwen3 graph reads must exist with the shape (ggml order) it expects."""
    shapes = {t.name: t.shape for t in header.tensors}
    expected = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,)}
    if "output.weight" in shapes:
        expected["output.weight"] = (n_embd, n_vocab)
    for i in range(n_layer):
        expected.update(
            {
                f"blk.{i}.attn_norm.weight": (n_embd,),
                f"blk.{i}.attn_q.weight": (n_embd, n_head * head_dim),
                f"blk.{i}.attn_k.weight": (n_embd, n_head_kv * head_dim),
                f"blk.{i}.attn_v.weight": (n_embd, n_head_kv * head_dim),
                f"blk.{i}.attn_output.weight": (n_head * head_dim, n_embd),
                f"blk.{i}.attn_q_norm.weight": (head_dim,),
                f"blk.{i}.attn_k_norm.weight": (head_dim,),
                f"blk.{i}.ffn_norm.weight": (n_embd,),
                f"blk.{i}.ffn_gate.weight": (n_embd, n_ff),
                f"blk.{i}.ffn_up.weight": (n_embd, n_ff),
                f"blk.{i}.ffn_down.weight": (n_ff, n_embd),
            }
        )
    for name, shape in expected.items():
        if name not in shapes:
            raise InputError(f"{path}: tensor {name} is missing")
        if shapes[name] != shape:
            raise InputError(f"{path}: tensor {name} has shape {list(shapes[name])}, expected {list(shape)}")
