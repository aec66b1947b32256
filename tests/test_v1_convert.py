"""MobileLLM v1 (MobileLLMForCausalLM, SentencePiece) converts to llama.cpp's `llama` with transformers' numbers.

Tiny checkpoints are written as the v1 repos are: config `MobileLLMForCausalLM` with
`share_embedding: true`, safetensors without lm_head, a SentencePiece `tokenizer.model` trained
here (offline, BPE, byte fallback, user-defined symbols). The reference is transformers'
`LlamaForCausalLM` with the embedding as lm_head; for layer sharing its layer list holds each
block twice in a row (the remote code's loop runs each block twice back to back).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.checkpoints import TOKENIZER_CORPUS
from helpers.logits import ERROR_BUDGET, F32_KV, UNIT_ROUNDOFF
from mllm_cpu.convert import tensor_plan
from mllm_cpu.convert.pipeline import convert_checkpoint, load_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.errors import InputError

USER_SYMBOLS = ["<think>", "</think>", "\\boxed"]
HIDDEN, FFN, BLOCKS, HEADS, KV_HEADS = 128, 256, 2, 4, 2
ODD_TEXTS = [
    "Let $x^2 - 5x + 6 = 0$, so \\boxed{2} or x = 3.",
    "def f(n: int) -> int:\n    return n * (n + 1) // 2\n",
    "Café naïve Straße 日本語 😀 → ≤ ∑",
    "a    b\t\tc\n\n\n  d   ",
    "<think> step </think> 12345 67",
    "unseen: ꙮ 𓀀 ﷽",
]


def _train_tokenizer(folder: Path) -> sentencepiece.SentencePieceProcessor:
    lines = [line for line in TOKENIZER_CORPUS if line.strip()] * 4
    model = folder / "spm"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(model),
        model_type="bpe",
        vocab_size=600,
        hard_vocab_limit=False,
        byte_fallback=True,
        user_defined_symbols=USER_SYMBOLS,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=0.995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.with_suffix(".model").read_bytes())
    model.with_suffix(".model").unlink()
    model.with_suffix(".vocab").unlink()
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def _reference(config: LlamaConfig, blocks: dict[str, torch.Tensor], sharing: bool) -> LlamaForCausalLM:
    runs = config.num_hidden_layers * (2 if sharing else 1)
    expanded = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": runs, "tie_word_embeddings": True})
    model = LlamaForCausalLM(expanded).eval()
    state = {}
    for name, value in blocks.items():
        if name.startswith("model.layers."):
            index, rest = name.removeprefix("model.layers.").split(".", 1)
            for copy in range(2 if sharing else 1):
                state[f"model.layers.{int(index) * (2 if sharing else 1) + copy}.{rest}"] = value
        else:
            state[name] = value
    state["lm_head.weight"] = blocks["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model


def build_v1(folder: Path, *, sharing: bool = False, seed: int = 0) -> tuple[Path, LlamaForCausalLM]:
    """A tiny v1 checkpoint folder and its transformers reference."""
    folder.mkdir(parents=True)
    processor = _train_tokenizer(folder)
    vocab = processor.vocab_size()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=BLOCKS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    generator = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(config)
    blocks: dict[str, torch.Tensor] = {}
    for name, parameter in sorted(model.named_parameters()):
        if name == "lm_head.weight":
            continue
        if name.endswith("norm.weight"):
            value = 0.6 + 0.8 * torch.rand(parameter.shape, generator=generator)
        elif name == "model.embed_tokens.weight":
            value = 3.0 / math.sqrt(HIDDEN) * torch.randn(parameter.shape, generator=generator)
        else:
            gain = 4.0 if name.split(".")[-2] in ("o_proj", "down_proj") else 2.0
            value = gain / math.sqrt(parameter.shape[1]) * torch.randn(parameter.shape, generator=generator)
        blocks[name] = value.contiguous()
    save_file(blocks, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hub_config = {
        "architectures": ["MobileLLMForCausalLM"],
        "model_type": "mobilellm",
        "auto_map": {"AutoModelForCausalLM": "modeling_mobilellm.MobileLLMForCausalLM"},
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": BLOCKS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "share_embedding": True,
        "layer_sharing": sharing,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(hub_config, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False})
    )
    return folder, _reference(config, blocks, sharing)


def _ids(folder: Path, count: int) -> list[int]:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = [1] + processor.encode(" ".join(TOKENIZER_CORPUS))
    assert len(ids) >= count
    return ids[:count]


def _reference_logits(model: LlamaForCausalLM, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    model = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, **F32_KV)
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float32)


@pytest.fixture(scope="module", params=["plain", "layer-share"])
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, LlamaForCausalLM, dict[str, Path]]:
    root = tmp_path_factory.mktemp(request.param)
    folder, reference = build_v1(root / "checkpoint", sharing=request.param == "layer-share")
    files = convert_checkpoint(folder, parse_quant_list("f32,f16,q8_0"), root / "gguf")
    return folder, reference, {f.level.name: f.summary.path for f in files}


def test_f32_logits_and_greedy_equal_transformers(converted: tuple[Path, LlamaForCausalLM, dict[str, Path]]) -> None:
    folder, reference, files = converted
    ids = _ids(folder, 60)
    assert np.abs(_llama_logits(files["f32"], ids) - _reference_logits(reference, ids)).max() < 1e-4
    prompt = ids[:12]
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    model = llama_cpp.Llama(str(files["f32"]), n_ctx=256, verbose=False, **F32_KV)
    tokens = []
    for token in model.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        tokens.append(token)
        if len(tokens) == len(expected):
            break
    assert tokens == expected


@pytest.mark.parametrize("level", ["f16", "q8_0"])
def test_reduced_precision_within_tolerance(
    converted: tuple[Path, LlamaForCausalLM, dict[str, Path]], level: str
) -> None:
    folder, reference, files = converted
    ids = _ids(folder, 60)
    expected = _reference_logits(reference, ids)
    got = _llama_logits(files[level], ids)
    tolerance = ERROR_BUDGET * UNIT_ROUNDOFF[level] * np.abs(expected).max()
    assert np.abs(got - expected).max() < tolerance
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.8  # Q8_0 swaps some close tops of random weights


def test_layer_share_file_runs_each_block_twice(converted: tuple[Path, LlamaForCausalLM, dict[str, Path]]) -> None:
    folder, _, files = converted
    checkpoint = load_checkpoint(folder)
    runs = BLOCKS * checkpoint.spec.layer_repeat
    model = llama_cpp.Llama(str(files["f32"]), n_ctx=64, verbose=False, vocab_only=True)
    assert int(model.metadata["llama.block_count"]) == runs
    assert "output.weight" not in {t.name for t in checkpoint.tensors}


def test_a_wrong_permutation_or_missing_repeat_would_be_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, reference = build_v1(tmp_path / "share", sharing=True)
    ids = _ids(folder, 60)
    expected = _reference_logits(reference, ids)
    monkeypatch.setattr(tensor_plan, "half_split_to_interleaved", lambda head_dim: np.arange(head_dim))
    unpermuted = convert_checkpoint(folder, parse_quant_list("f32"), tmp_path / "unpermuted")[0].summary.path
    assert np.abs(_llama_logits(unpermuted, ids) - expected).max() > 1e-2
    monkeypatch.undo()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layer_sharing": False}))
    unrepeated = convert_checkpoint(folder, parse_quant_list("f32"), tmp_path / "unrepeated")[0].summary.path
    assert np.abs(_llama_logits(unrepeated, ids) - expected).max() > 1e-2


def test_llama_cpp_tokenizes_as_sentencepiece(converted: tuple[Path, LlamaForCausalLM, dict[str, Path]]) -> None:
    folder, _, files = converted
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab = llama_cpp.Llama(str(files["f32"]), vocab_only=True, verbose=False)
    plain = [t for t in [*ODD_TEXTS, *TOKENIZER_CORPUS[:40]] if not any(s in t for s in USER_SYMBOLS)]
    assert len(plain) >= 20
    for text in plain:
        expected = processor.encode(text)
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        # llama.cpp writes the space of the dummy prefix that sentencepiece drops when decoding
        assert vocab.detokenize(expected).decode().removeprefix(" ") == processor.decode(expected), text
    assert vocab.tokenize(b"x", add_bos=True)[0] == 1


def test_user_defined_symbols_differ_in_the_space_after_them(
    converted: tuple[Path, LlamaForCausalLM, dict[str, Path]],
) -> None:
    """A known llama.cpp difference (Llama-2's vocabulary, which v1 uses, has no user-defined symbols):
    llama.cpp matches the symbol as one token, as sentencepiece does, but then starts the text after it
    with a new space prefix ("\\boxed{" -> "\\boxed", "▁{" where sentencepiece gives "\\boxed", "{")."""
    folder, _, files = converted
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab = llama_cpp.Llama(str(files["f32"]), vocab_only=True, verbose=False)
    text = "so \\boxed{2}"
    got = [processor.IdToPiece(i) for i in vocab.tokenize(text.encode(), add_bos=False, special=False)]
    expected = [processor.IdToPiece(i) for i in processor.encode(text)]
    assert "\\boxed" in got and "\\boxed" in expected
    assert got[got.index("\\boxed") + 1].startswith("▁") and not expected[expected.index("\\boxed") + 1].startswith("▁")


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    folder, _ = build_v1(tmp_path / "bad")
    model = (folder / "tokenizer.model").read_bytes()
    (folder / "tokenizer.model").write_bytes(b"\xff\xfe not a sentencepiece model")
    with pytest.raises(InputError, match="not a SentencePiece model"):
        load_checkpoint(folder)
    (folder / "tokenizer.model").write_bytes(model)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    with pytest.raises(InputError) as error:
        load_checkpoint(folder)
    assert "\n" not in str(error.value) and "model.embed_tokens.weight" in str(error.value)
