"""What a converted file holds: names, metadata, tokenizer, tensor types, parameter counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from helpers.checkpoints import BOS_ID, EOM_ID, EOT_ID, TINY_GQA2, TOKENIZER_CORPUS, build_checkpoint, load_tokenizer
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.gguf_summary import read_summary
from mllm_cpu.convert.layout import hf_tensor_shapes
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_embedding_type, parse_quant_list
from mllm_cpu.convert.synthetic import SYNTHETIC_SPECS
from mllm_cpu.core import gguf_keys
from mllm_cpu.engine import Engine


def _reader_value(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_file_names_follow_the_gguf_convention(tiny_ggufs: dict[str, Path]) -> None:
    assert tiny_ggufs["q4_k_m"].name.startswith("MobileLLM-R1-")
    assert {p.name.rsplit("-", 1)[1] for p in tiny_ggufs.values()} == {
        "F32.gguf",
        "F16.gguf",
        "BF16.gguf",
        "Q8_0.gguf",
        "Q4_K_M.gguf",
        "Q4_0.gguf",
    }


def test_metadata_and_tokenizer_keys(tiny_checkpoint: Path, tiny_ggufs: dict[str, Path]) -> None:
    reader = gguf.GGUFReader(tiny_ggufs["q8_0"])
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    general, tokenizer = gguf.Keys.General, gguf.Keys.Tokenizer
    assert _reader_value(reader, general.ARCHITECTURE) == "qwen3"
    assert str(_reader_value(reader, general.BASENAME)).startswith("MobileLLM-R1")
    assert _reader_value(reader, general.NAME)
    assert _reader_value(reader, general.SIZE_LABEL)
    assert _reader_value(reader, gguf_keys.SOURCE_ARCHITECTURE) == "Llama4ForCausalLM"
    assert _reader_value(reader, gguf_keys.SOURCE_LABEL) == "MobileLLM-R1 (Llama4 dense)"
    assert _reader_value(reader, gguf_keys.arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, "qwen3")) == 4096
    assert _reader_value(reader, gguf_keys.arch_key(gguf.Keys.Rope.FREQ_BASE, "qwen3")) == 8_000_000.0
    assert _reader_value(reader, tokenizer.MODEL) == "gpt2"
    assert _reader_value(reader, tokenizer.PRE) == "llama-bpe"
    assert _reader_value(reader, tokenizer.BOS_ID) == BOS_ID
    assert _reader_value(reader, tokenizer.EOS_ID) == EOT_ID
    assert _reader_value(reader, tokenizer.EOT_ID) == EOT_ID
    assert _reader_value(reader, tokenizer.EOM_ID) == EOM_ID
    assert _reader_value(reader, tokenizer.ADD_BOS) is True
    assert _reader_value(reader, tokenizer.CHAT_TEMPLATE) == config["chat_template"]
    types = _reader_value(reader, tokenizer.TOKEN_TYPE)
    assert types[BOS_ID] == gguf.TokenType.CONTROL and types[0] == gguf.TokenType.NORMAL
    hf_merges = json.loads((tiny_checkpoint / "tokenizer.json").read_text())["model"]["merges"]
    assert _reader_value(reader, tokenizer.MERGES) == [" ".join(pair) for pair in hf_merges]


def test_summary_agrees_with_gguf_py_and_llama_cpp(tiny_ggufs: dict[str, Path]) -> None:
    for path in tiny_ggufs.values():
        summary = read_summary(path)
        reader = gguf.GGUFReader(path)
        mix: dict[str, int] = {}
        for tensor in reader.tensors:
            name = tensor.tensor_type.name.lower().replace("_k", "_K")
            mix[name] = mix.get(name, 0) + int(tensor.n_elements)
        assert summary.type_mix == mix
        assert summary.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
        model = llama_cpp.Llama(str(path), n_ctx=64, verbose=False, vocab_only=False)
        assert summary.parameters == llama_cpp.llama_model_n_params(model._model.model)


def test_k_quants_fall_back_on_rows_not_a_multiple_of_256(tiny_ggufs: dict[str, Path]) -> None:
    """The TINY preset is 192 wide, like the 140M's 576: those rows cannot be K-quants, and the
    summary reports the real mix rather than the requested name."""
    header = read_gguf_header(tiny_ggufs["q4_k_m"])
    k_quants = {gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K}
    narrow = [t for t in header.tensors if len(t.shape) == 2 and t.shape[0] % 256]
    assert narrow and all(t.type not in k_quants for t in narrow)
    summary = read_summary(tiny_ggufs["q4_k_m"])
    assert summary.file_type == "Q4_K_M"
    assert "q4_K" in summary.type_mix and len(summary.type_mix) >= 3


def test_embedding_type_sets_the_tied_matrix(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "MobileLLM-R1-tiny", TINY_GQA2)
    default = convert_checkpoint(folder, parse_quant_list("q4_0"), tmp_path / "default")[0]
    small = convert_checkpoint(
        folder, parse_quant_list("q4_0"), tmp_path / "small", embedding_type=parse_embedding_type("q4_0")
    )[0]

    def embedding_type(path: Path) -> str:
        tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
        return tensor.tensor_type.name

    assert embedding_type(default.summary.path) == "Q6_K"
    assert embedding_type(small.summary.path) == "Q4_0"
    assert small.summary.file_bytes < default.summary.file_bytes
    llama_cpp.Llama(str(small.summary.path), n_ctx=64, verbose=False)


@pytest.mark.parametrize("size", ["140m", "360m", "950m"])
def test_synthetic_specs_have_the_published_parameter_counts(size: str) -> None:
    expected = {"140m": 140_250_432, "360m": 359_433_088, "950m": 949_688_576}[size]
    spec = SYNTHETIC_SPECS[size]
    assert spec.parameter_count == expected
    qk_norm_weights = 2 * spec.head_dim * spec.n_layer
    assert (
        sum(int(np.prod(s)) for s in hf_tensor_shapes(spec, tied=spec.tied_embeddings).values()) + qk_norm_weights
        == expected
    )


def _llama_vocab(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def test_tokenization_matches_hf_tokenizers(tiny_checkpoint: Path, tiny_ggufs: dict[str, Path]) -> None:
    hf = load_tokenizer(tiny_checkpoint)
    llama = _llama_vocab(tiny_ggufs["q8_0"])
    for text in TOKENIZER_CORPUS:
        expected = hf.encode(text).ids
        assert llama.tokenize(text.encode(), add_bos=True, special=True) == expected, text
        assert llama.detokenize(expected[1:], special=True).decode() == hf.decode(
            expected[1:], skip_special_tokens=False
        )


def test_synthetic_llama3_sized_tokenizer_matches_hf_tokenizers(synthetic_tiny_gguf: Path) -> None:
    folder = synthetic_tiny_gguf.parent / "MobileLLM-R1-tiny-synthetic"
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert hf.get_vocab_size() == 128256
    llama = _llama_vocab(synthetic_tiny_gguf)
    for text in TOKENIZER_CORPUS:
        assert llama.tokenize(text.encode(), add_bos=True, special=True) == hf.encode(text).ids, text


def test_chat_template_renders_like_transformers(tiny_checkpoint: Path, tiny_ggufs: dict[str, Path]) -> None:
    messages = [
        {"role": "system", "content": "Please reason step by step."},
        {"role": "user", "content": "Compute 1+1."},
        {"role": "assistant", "content": "\\boxed{2}"},
        {"role": "user", "content": "And 2+2?"},
    ]
    expected = AutoTokenizer.from_pretrained(tiny_checkpoint).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    engine = Engine(tiny_ggufs["q8_0"], n_ctx=256)
    assert engine.render_chat(messages) == expected


def test_model_card_license_reaches_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "MobileLLM-R1-tiny"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "README.md").write_text(
        "---\nlicense: other\nlicense_name: fair-noncommercial-research-license\n"
        "base_model: facebook/MobileLLM-R1-950M-base\n---\n# MobileLLM-R1\n"
    )
    path = convert_checkpoint(folder, parse_quant_list("q8_0"), tmp_path / "out")[0].summary.path
    reader = gguf.GGUFReader(path)
    general = gguf.Keys.General
    assert _reader_value(reader, general.LICENSE) == "other"
    assert _reader_value(reader, general.LICENSE_NAME) == "fair-noncommercial-research-license"
    repo_url = general.BASE_MODEL_REPO_URL.format(id=0)
    assert str(_reader_value(reader, repo_url)).endswith("facebook/MobileLLM-R1-950M-base")
