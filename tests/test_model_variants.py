"""Every published MobileLLM-R1 checkpoint converts: R1 (32K context), R1-base (4K) and R1.5 (32K).

All are `Llama4ForCausalLM` dense models with the 140M/360M/950M shapes; their config.json
files differ in the context length and in what the writing transformers version added
(`rope_theta` or `rope_parameters`, `layer_types` absent or chunked with chunks of the
whole context). A tiny checkpoint in the base layout is converted and run in llama.cpp.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from helpers.checkpoints import TOKENIZER_CORPUS, load_tokenizer, reference_logits
from mllm_cpu.convert.model_spec import spec_from_config
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.convert.synthetic import SYNTHETIC_SPECS
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.model_file import validate_model_file

PUBLISHED = {  # hub name -> (shape preset, context length)
    f"MobileLLM-{family}-{size.upper()}{suffix}": (size, context)
    for family, suffix, context in (("R1", "", 32768), ("R1", "-base", 4096), ("R1.5", "", 32768))
    for size in ("140m", "360m", "950m")
}


def _config(size: str, context: int, style: str) -> dict[str, Any]:
    """A config.json as transformers 4.5x ("hub") or 5 ("transformers") writes it."""
    config = SYNTHETIC_SPECS[size].to_config(bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    config.update(max_position_embeddings=context, attention_chunk_size=context)
    if style == "hub":
        del config["layer_types"]
        return config
    rope_theta = config.pop("rope_theta")
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    config["layer_types"] = ["chunked_attention"] * config["num_hidden_layers"]
    config["dtype"] = config.pop("torch_dtype")
    return config


@pytest.mark.parametrize("style", ["hub", "transformers"])
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_are_accepted(name: str, style: str) -> None:
    size, context = PUBLISHED[name]
    spec = spec_from_config(_config(size, context, style), name)
    expected = SYNTHETIC_SPECS[size]
    assert (spec.n_layer, spec.n_embd, spec.n_ff, spec.n_head, spec.n_head_kv) == (
        expected.n_layer,
        expected.n_embd,
        expected.n_ff,
        expected.n_head,
        expected.n_head_kv,
    )
    assert spec.n_ctx == context and spec.rope_theta == 8_000_000.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_types": ["sliding_attention"] * 15}, "attention layer type sliding_attention"),
        ({"attention_chunk_size": 2048}, "chunked attention (2048 < context 4096)"),
    ],
)
def test_attention_that_is_not_full_is_refused(change: dict[str, Any], message: str) -> None:
    config = {**_config("140m", 4096, "transformers"), **change}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_config(config)


def test_a_base_layout_checkpoint_runs_with_its_4k_context(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "MobileLLM-R1-tiny-base"))
    config = json.loads((folder / "config.json").read_text())
    assert config["max_position_embeddings"] == 4096
    config["layer_types"] = ["chunked_attention"] * config["num_hidden_layers"]
    config["attention_chunk_size"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    path = convert_checkpoint(folder, parse_quant_list("f32"), tmp_path / "out")[0].summary.path
    assert validate_model_file(path).n_ctx_train == 4096

    ids = load_tokenizer(folder).encode(" ".join(TOKENIZER_CORPUS)).ids[:60]
    model = llama_cpp.Llama(
        str(path),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )
    model.eval(ids)
    got = np.array(model.scores[: len(ids)], dtype=np.float32)
    assert np.abs(got - reference_logits(folder, ids)).max() < 1e-4
    assert Engine(path).n_ctx == 4096  # the default 8192 is cut to the trained length
