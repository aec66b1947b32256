"""Checks that the tiny checkpoint fixtures really look and compute like MobileLLM-R1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoConfig, AutoTokenizer, Llama4ForCausalLM

from helpers.checkpoints import (
    BOS_ID,
    EOM_ID,
    EOS_IDS,
    EOT_ID,
    PRESETS,
    SPECIAL_TOKEN_IDS,
    TINY,
    TINY_UNTIED,
    TINY_VOCAB_SIZE,
    TOKENIZER_CORPUS,
    _tokenizer_json,
    build_checkpoint,
    build_tokenizer,
    load_tokenizer,
    reference_greedy,
    reference_logits,
)
from mllm_cpu.convert.layout import hf_tensor_shapes
from mllm_cpu.convert.model_spec import spec_from_config

PROMPT_IDS = [BOS_ID, 5, 300, 41, 700, 12, 99, 512, 3, 260, 88, 640]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("tiny"), TINY)


def _stored_tensors(folder: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (safetensors dtype, shape) over all weight files of folder."""
    stored: dict[str, tuple[str, list[int]]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as reader:
            for name in reader.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor_slice = reader.get_slice(name)
                stored[name] = (tensor_slice.get_dtype(), tensor_slice.get_shape())
    return stored


def test_config_has_mobilellm_r1_keys(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    layers = TINY.num_hidden_layers
    assert config["model_type"] == "llama4_text"
    assert config["architectures"] == ["Llama4ForCausalLM"]
    assert config["num_local_experts"] == 0
    assert config["interleave_moe_layer_step"] == 0
    assert config["moe_layers"] == []
    assert config["intermediate_size_mlp"] == TINY.intermediate_size
    assert config["use_qk_norm"] is True
    assert config["no_rope_layers"] == [1] * layers
    assert config["layer_types"] == ["full_attention"] * layers
    assert config["attention_chunk_size"] == config["max_position_embeddings"]
    assert config["attn_temperature_tuning"] is False
    assert config["rope_theta"] == 8_000_000.0
    assert config["rope_scaling"] is None
    assert "rope_parameters" not in config
    assert config["rms_norm_eps"] == 1e-5
    assert config["head_dim"] == 64
    assert config["tie_word_embeddings"] is True
    assert config["bos_token_id"] == BOS_ID
    assert config["eos_token_id"] == EOS_IDS
    generation = json.loads((tiny / "generation_config.json").read_text())
    assert generation["eos_token_id"] == EOS_IDS


def test_weights_are_the_layouts_dense_llama4_tensors(tiny: Path) -> None:
    """transformers writes exactly the HF names and shapes convert/layout.py maps from."""
    stored = _stored_tensors(tiny)
    spec = spec_from_config(json.loads((tiny / "config.json").read_text()))
    expected = hf_tensor_shapes(spec, tied=True)
    assert {name: tuple(shape) for name, (_, shape) in stored.items()} == expected
    assert stored["model.layers.0.feed_forward.gate_proj.weight"][1] == [TINY.intermediate_size, TINY.hidden_size]
    assert stored["model.layers.0.self_attn.k_proj.weight"][1] == [TINY.num_key_value_heads * 64, TINY.hidden_size]
    assert {dtype for dtype, _ in stored.values()} == {"F32"}


def test_transformers_runs_qk_norm_and_rope_on_every_layer(tiny: Path) -> None:
    model = Llama4ForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    for layer in model.model.layers:
        assert not layer.is_moe_layer
        assert layer.self_attn.use_rope
        assert hasattr(layer.self_attn, "qk_norm")
    assert model.config.rope_parameters["rope_theta"] == 8_000_000.0
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_qk_norm_changes_the_logits(tiny: Path) -> None:
    without_qk_norm = AutoConfig.from_pretrained(tiny)
    without_qk_norm.use_qk_norm = False
    model = Llama4ForCausalLM.from_pretrained(tiny, config=without_qk_norm, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(torch.tensor([PROMPT_IDS])).logits[0].numpy()
    assert np.abs(plain - reference_logits(tiny, PROMPT_IDS)).max() > 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_reference_logits_have_shape_and_spread(tmp_path: Path, preset: str) -> None:
    folder = build_checkpoint(tmp_path, PRESETS[preset], seed=3)
    logits = reference_logits(folder, PROMPT_IDS)
    assert logits.shape == (len(PROMPT_IDS), TINY_VOCAB_SIZE)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert (logits.std(axis=-1) > 1.0).all()
    assert len({int(i) for i in logits.argmax(axis=-1)}) > 1


def test_reference_greedy_follows_logits(tiny: Path) -> None:
    generated = reference_greedy(tiny, PROMPT_IDS, 8)
    assert len(generated) == 8
    assert generated[0] == int(reference_logits(tiny, PROMPT_IDS)[-1].argmax())
    extended = reference_logits(tiny, PROMPT_IDS + generated[:-1])
    assert [int(i) for i in extended[len(PROMPT_IDS) - 1 :].argmax(axis=-1)] == generated


def test_build_is_deterministic(tmp_path: Path, tiny: Path) -> None:
    again = build_checkpoint(tmp_path, TINY)
    np.testing.assert_array_equal(reference_logits(again, PROMPT_IDS), reference_logits(tiny, PROMPT_IDS))
    other_seed = build_checkpoint(tmp_path / "seed1", TINY, seed=1)
    assert not np.allclose(reference_logits(other_seed, PROMPT_IDS), reference_logits(tiny, PROMPT_IDS))


def test_sharded_bfloat16_checkpoint(tmp_path: Path) -> None:
    single = build_checkpoint(tmp_path / "single", TINY_UNTIED, dtype="bfloat16")
    sharded = build_checkpoint(tmp_path / "sharded", TINY_UNTIED, dtype="bfloat16", shards=3)
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    assert "lm_head.weight" in index["weight_map"]
    assert {dtype for dtype, _ in _stored_tensors(sharded).values()} == {"BF16"}
    assert json.loads((sharded / "config.json").read_text())["torch_dtype"] == "bfloat16"
    np.testing.assert_array_equal(reference_logits(sharded, PROMPT_IDS), reference_logits(single, PROMPT_IDS))


def test_float16_and_transformers_config_style(tmp_path: Path, tiny: Path) -> None:
    folder = build_checkpoint(tmp_path, TINY, dtype="float16", config_style="transformers")
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_theta": 8_000_000.0, "rope_type": "default"}
    assert {dtype for dtype, _ in _stored_tensors(folder).values()} == {"F16"}
    np.testing.assert_allclose(reference_logits(folder, PROMPT_IDS), reference_logits(tiny, PROMPT_IDS), atol=0.1)


def test_tokenizer_size_and_special_ids(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    assert tokenizer.get_vocab_size() == TINY_VOCAB_SIZE
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert tokenizer.token_to_id(token) == token_id
    assert max(SPECIAL_TOKEN_IDS.values()) == TINY_VOCAB_SIZE - 1
    assert tokenizer.token_to_id("<|reserved_special_token_247|>") == TINY_VOCAB_SIZE - 1
    assert (tokenizer.id_to_token(EOT_ID), tokenizer.id_to_token(EOM_ID)) == ("<|eot_id|>", "<|eom_id|>")
    assert set(ByteLevel.alphabet()) <= set(tokenizer.get_vocab())


def test_tokenizer_round_trips_the_corpus(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    for text in TOKENIZER_CORPUS:
        ids = tokenizer.encode(text).ids
        assert ids[0] == BOS_ID
        assert tokenizer.decode(ids[1:], skip_special_tokens=False) == text
    assert tokenizer.encode("a<|eot_id|>b", add_special_tokens=False).ids[1] == EOT_ID


def test_transformers_tokenizer_and_chat_template(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS_ID, EOT_ID)
    assert tokenizer("hi").input_ids[0] == BOS_ID
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_tokenizer_training_is_deterministic(tmp_path: Path, tiny: Path) -> None:
    _tokenizer_json.cache_clear()
    build_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
