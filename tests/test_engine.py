"""The llama.cpp engine on real tiny GGUF files: loading, stop ids, seeds, streaming, bad files."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import gguf
import pytest

from helpers.forcing import EOT_ID, forcing_options
from helpers.small_gguf import write_small_gguf
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import DEFAULT_CONTEXT, Engine
from mllm_cpu.hardware import physical_cores
from mllm_cpu.sampling import SamplingOptions, sampling_defaults

EOS_ID, EOM_ID = 128001, 128008
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def engine(synthetic_tiny_gguf: Path) -> Engine:
    """One thread: the tiny model gains nothing from more, and stays fast when another job holds the cores."""
    return Engine(synthetic_tiny_gguf, threads=1)


@pytest.fixture(scope="module")
def prompt(engine: Engine) -> str:
    return engine.render_chat(MESSAGES)


def test_loads_with_defaults(synthetic_tiny_gguf: Path) -> None:
    engine = Engine(synthetic_tiny_gguf)
    assert engine.model.n_ctx_train == 4096
    assert engine.n_ctx == min(DEFAULT_CONTEXT, engine.model.n_ctx_train)
    assert engine.llama.n_ctx() == engine.n_ctx
    assert engine.threads == physical_cores()
    assert engine.llama.context_params.n_threads == physical_cores()
    template = engine.prompt_format.chat_template
    assert template and "start_header_id" in template


def test_context_is_settable_within_the_trained_length(synthetic_tiny_gguf: Path) -> None:
    assert Engine(synthetic_tiny_gguf, n_ctx=512, threads=1).llama.n_ctx() == 512
    with pytest.raises(InputError, match="more than the model's 4096"):
        Engine(synthetic_tiny_gguf, n_ctx=8192)
    with pytest.raises(InputError, match="too small"):
        Engine(synthetic_tiny_gguf, n_ctx=16)


def test_chat_template_from_the_file(engine: Engine, prompt: str) -> None:
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    tokens = engine.tokenize(prompt)
    assert tokens.count(128000) == 1
    assert tokens.count(EOT_ID) == 2


def test_every_end_token_is_a_stop_id(engine: Engine) -> None:
    for token in (EOS_ID, EOM_ID, EOT_ID):
        assert engine.is_stop(token)
    assert not engine.is_stop(engine.tokenize("7")[-1])
    assert not engine.is_stop(128000)


@pytest.mark.parametrize("stop_id", [EOS_ID, EOM_ID, EOT_ID])
def test_generation_stops_when_a_stop_id_is_sampled(engine: Engine, prompt: str, stop_id: int) -> None:
    generation = engine.generate(prompt, SamplingOptions(seed=1, max_tokens=50, logit_bias={stop_id: 100.0}))
    assert generation.stop_reason == "eos"
    assert generation.generated_tokens == 0
    assert generation.text == ""


def test_generation_stops_after_some_text(engine: Engine, prompt: str) -> None:
    generation = engine.generate(prompt, forcing_options(engine, "Total: 4."))
    assert generation.text == "Total: 4."
    assert generation.stop_reason == "eos"
    assert EOT_ID not in generation.token_ids


def test_length_limit(engine: Engine, prompt: str) -> None:
    generation = engine.generate(prompt, SamplingOptions(seed=3, max_tokens=7))
    assert generation.generated_tokens == 7
    assert generation.stop_reason == "length"


def test_context_limit(synthetic_tiny_gguf: Path) -> None:
    small = Engine(synthetic_tiny_gguf, n_ctx=64, threads=1)
    tokens = small.tokenize(small.render_chat(MESSAGES))
    generation = small.generate(tokens, SamplingOptions(seed=3, max_tokens=1000))
    assert generation.stop_reason == "context"
    assert generation.prompt_tokens + generation.generated_tokens == 64
    with pytest.raises(InputError, match="the context holds 64"):
        small.generate("word " * 100, SamplingOptions(seed=3))


def test_same_seed_same_text_other_seed_other_text(engine: Engine, prompt: str) -> None:
    options = SamplingOptions(temperature=1.0, seed=11, max_tokens=24)
    first = engine.generate(prompt, options, reuse_prefix=False)
    again = engine.generate(prompt, options, reuse_prefix=False)
    other = engine.generate(prompt, replace(options, seed=12), reuse_prefix=False)
    assert first.token_ids == again.token_ids
    assert first.text == again.text
    assert first.token_ids != other.token_ids


def test_logit_bias_forces_a_token(engine: Engine, prompt: str) -> None:
    seven = engine.tokenize("7")[-1]
    generation = engine.generate(prompt, SamplingOptions(seed=2, max_tokens=4, logit_bias={seven: 100.0}))
    assert generation.text == "7777"
    with pytest.raises(InputError, match="outside the vocabulary"):
        engine.generate(prompt, SamplingOptions(max_tokens=2, logit_bias={10**7: 1.0}))


def test_streaming_pieces_make_up_the_text(engine: Engine, prompt: str) -> None:
    pieces: list[str] = []
    generation = engine.generate(prompt, SamplingOptions(seed=5, max_tokens=40), pieces.append)
    assert pieces
    assert "".join(pieces) == generation.text
    assert generation.tokens_per_second > 0


def test_interrupt_keeps_the_partial_output(engine: Engine, prompt: str) -> None:
    pieces: list[str] = []

    def stop_after_five(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 5:
            raise KeyboardInterrupt

    generation = engine.generate(prompt, SamplingOptions(seed=5, max_tokens=200), stop_after_five)
    assert generation.stop_reason == "interrupted"
    assert 5 <= generation.generated_tokens < 200
    assert generation.text.startswith("".join(pieces[:5]))
    after = engine.generate(prompt, SamplingOptions(seed=5, max_tokens=3))
    assert after.generated_tokens == 3


def test_multi_turn_prefix_reuse_gives_the_same_tokens(engine: Engine) -> None:
    options = SamplingOptions(temperature=0.0, max_tokens=12)
    first_turn = engine.render_chat(MESSAGES)
    engine.generate(first_turn, options)
    follow_up = [{"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    longer = engine.render_chat([*MESSAGES, *follow_up])
    reused = engine.generate(longer, options)
    fresh = engine.generate(longer, options, reuse_prefix=False)
    assert reused.token_ids == fresh.token_ids


def test_sampling_defaults_from_the_file_metadata() -> None:
    options = sampling_defaults(
        {
            gguf.Keys.General.SAMPLING_TEMP: 0.8,
            gguf.Keys.General.SAMPLING_TOP_K: 50,
            gguf.Keys.General.SAMPLING_TOP_P: 0.9,
            gguf.Keys.General.SAMPLING_MIN_P: 0.05,
            gguf.Keys.General.SAMPLING_PENALTY_REPEAT: 1.1,
        }
    )
    assert (options.temperature, options.top_k, options.top_p, options.min_p) == pytest.approx((0.8, 50, 0.9, 0.05))
    assert options.repeat_penalty == pytest.approx(1.1)
    assert isinstance(options.top_k, int)
    assert sampling_defaults({}) == SamplingOptions()


def _truncated(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    with target.open("r+b") as handle:
        handle.truncate(source.stat().st_size // 2)
    return target


def _bad_magic(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    with target.open("r+b") as handle:
        handle.write(b"GGML")
    return target


BAD_FILES = {
    "truncated": (lambda good, folder: _truncated(good, folder / "half.gguf"), "truncated"),
    "wrong magic": (lambda good, folder: _bad_magic(good, folder / "magic.gguf"), "not a GGUF file (bad magic"),
    "unknown architecture": (
        lambda good, folder: write_small_gguf(folder / "mystery.gguf", "mystery"),
        "unknown architecture 'mystery'",
    ),
    "llama4 with zero experts": (
        lambda good, folder: write_small_gguf(folder / "llama4.gguf", "llama4", expert_count=0),
        "llama4 file with zero experts",
    ),
    "not a file": (lambda good, folder: folder / "absent.gguf", "no such file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_rejected_with_one_line(case: str, synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    make, message = BAD_FILES[case]
    path = make(synthetic_tiny_gguf, tmp_path)
    with pytest.raises(InputError) as error:
        Engine(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_llama4_zero_expert_file_is_what_upstream_writes(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "upstream.gguf", "llama4", expert_count=0)
    reader = gguf.GGUFReader(path)
    assert reader.fields[gguf_keys.ARCHITECTURE].contents() == "llama4"
    assert reader.fields[gguf_keys.arch_key(gguf.Keys.LLM.EXPERT_COUNT, "llama4")].contents() == 0
    with pytest.raises(InputError, match="mllm-cpu convert"):
        Engine(path)
