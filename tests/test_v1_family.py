"""MobileLLM v1 through the commands MobileLLM-R1 goes through.

The synthetic exact-shape presets (v1-125m, and v1-125m-layer-share: 30 blocks each run twice)
are converted by `mllm-cpu convert --synthetic` and run in llama.cpp; `info`, `models`, `chat`
and `solve` name the family; a v1 file (no chat template) gets the base-model prompt;
`solve --file` and `bench` take a v1 and an R1 file side by side; `repair` leaves a community
v1 file as it is and refuses a layer-share one that holds each block once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pexpect
import pytest
import sentencepiece

from helpers.cli_runner import MLLM_CPU, error_lines, run_cli
from helpers.small_gguf import rewrite_gguf
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.gguf_summary import read_summary
from mllm_cpu.convert.layout import ModelDims, hf_tensor_shapes
from mllm_cpu.convert.model_spec import spec_from_config
from mllm_cpu.convert.synthetic import SYNTHETIC_FOLDER_NAMES, SYNTHETIC_SPECS, write_llama2_shaped_tokenizer
from mllm_cpu.core import gguf_keys
from mllm_cpu.prompt_format import PromptFormat, load_vocabulary
from mllm_cpu.solver import problem_messages
from mllm_cpu.tasks import get_preset

PRESETS = ("v1-125m", "v1-125m-layer-share")
FAMILY = "MobileLLM v1, run as llama"
R1_FAMILY = "MobileLLM-R1 (Llama4 dense), run as qwen3"
OUR_KEYS = (
    gguf_keys.SOURCE_ARCHITECTURE,
    gguf_keys.SOURCE_LABEL,
    gguf_keys.LAYER_REPEAT,
    gguf_keys.ORIGIN,
    gguf_keys.ORIGIN_SOURCE,
)
PUBLISHED_PARAMETERS = {  # the sizes Meta names the models by: 125M, 350M, 600M, 1B, 1.5B
    "v1-125m": 124_635_456,
    "v1-350m": 345_355_200,
    "v1-600m": 603_188_352,
    "v1-1b": 1_005_461_760,
    "v1-1.5b": 1_562_388_800,
}
TEXTS = [
    "kotavi meruno basi 12345 + 678 = ?",
    "Hello, World! Let x = 3.14; so \\boxed{2}.",
    "Café naïve 日本語 😀 → ≤",
    "a    b\t\tc\n\n  d   ",
]


@pytest.fixture(scope="module")
def v1_files(tmp_path_factory: pytest.TempPathFactory, probe_cache: Path) -> dict[str, Path]:
    """Both presets as a user converts them: `mllm-cpu convert --synthetic PRESET -q q4_0`."""
    outdir = tmp_path_factory.mktemp("v1")
    files = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLLM_CPU_HOME", str(outdir / "home"))
        patch.setenv("MLLM_CPU_CACHE", str(probe_cache))
        for preset in PRESETS:
            result = run_cli("convert", "--synthetic", preset, "-q", "q4_0", "--outdir", str(outdir), "--json")
            assert result.returncode == 0, result.stderr
            (row,) = json.loads(result.stdout)
            files[preset] = Path(row["file"])
    return files


@pytest.mark.parametrize("preset", PRESETS)
def test_synthetic_presets_have_the_exact_shapes_and_run(v1_files: dict[str, Path], preset: str) -> None:
    path = v1_files[preset]
    header = read_gguf_header(path)
    sharing = preset.endswith("layer-share")
    assert header.architecture == "llama"
    dims = ModelDims.from_header(header)
    assert (dims.n_layer, dims.n_embd, dims.n_head, dims.n_head_kv, dims.head_dim, dims.n_ff, dims.n_vocab) == (
        60 if sharing else 30,
        576,
        9,
        3,
        64,
        1536,
        32000,
    )
    assert header.get(gguf_keys.LAYER_REPEAT) == (2 if sharing else None)
    assert "output.weight" not in {t.name for t in header.tensors}  # shared embeddings
    assert read_summary(path).parameters == SYNTHETIC_SPECS[preset].parameter_count
    model = llama_cpp.Llama(str(path), n_ctx=128, verbose=False)
    prompt = model.tokenize(b"Question: what is two and two?\nAnswer:")
    tokens = []
    for token in model.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        tokens.append(token)
        if len(tokens) == 6:
            break
    assert len(tokens) == 6 and all(0 <= t < 32000 for t in tokens)


def test_layer_share_file_holds_each_block_twice(v1_files: dict[str, Path]) -> None:
    tensors = {t.name: t.data for t in gguf.GGUFReader(v1_files["v1-125m-layer-share"]).tensors}
    for name in ("attn_q", "attn_k", "ffn_down", "attn_norm"):
        assert np.array_equal(tensors[f"blk.0.{name}.weight"], tensors[f"blk.1.{name}.weight"]), name
        assert np.array_equal(tensors[f"blk.58.{name}.weight"], tensors[f"blk.59.{name}.weight"]), name
    assert not np.array_equal(tensors["blk.1.attn_q.weight"], tensors["blk.2.attn_q.weight"])


def test_llama_cpp_refuses_two_tensor_infos_on_one_copy_of_the_data(v1_files: dict[str, Path], tmp_path: Path) -> None:
    """Why layer sharing is expanded: pointing a repeated block's tensor infos at its twin's data (which
    would keep the file at the checkpoint's size) is refused by llama.cpp's GGUF reader, which expects
    every tensor's data right after the one before."""
    aliased = tmp_path / "aliased.gguf"
    shutil.copy(v1_files["v1-125m-layer-share"], aliased)
    reader = gguf.GGUFReader(aliased, "r+")
    tensors = {t.name: t for t in reader.tensors}
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        twin, repeat = tensors[f"blk.0.{name}.weight"], tensors[f"blk.1.{name}.weight"]
        repeat.field.parts[-1][0] = twin.field.parts[-1][0]  # the data offset
    del reader
    params = llama_cpp.llama_model_default_params()
    llama_cpp.llama_backend_init()
    assert not llama_cpp.llama_model_load_from_file(str(aliased).encode(), params)
    sound = llama_cpp.llama_model_load_from_file(str(v1_files["v1-125m-layer-share"]).encode(), params)
    assert sound
    llama_cpp.llama_model_free(sound)


@pytest.mark.parametrize("preset", sorted(PUBLISHED_PARAMETERS))
def test_v1_preset_table(preset: str) -> None:
    spec = SYNTHETIC_SPECS[preset]
    assert spec.is_v1 and spec.gguf_architecture == "llama" and spec.n_vocab == 32000 and spec.head_dim == 64
    assert spec_from_config(spec.to_config(bos_token_id=1, eos_token_id=2), preset) == spec
    shapes = hf_tensor_shapes(spec, tied=spec.tied_embeddings, architecture=spec.gguf_architecture)
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == spec.parameter_count
    assert spec.parameter_count == PUBLISHED_PARAMETERS[preset]
    assert ("lm_head.weight" in shapes) == (preset == "v1-1.5b")
    assert SYNTHETIC_FOLDER_NAMES[preset].startswith("MobileLLM-") and "R1" not in SYNTHETIC_FOLDER_NAMES[preset]
    shared = SYNTHETIC_SPECS["v1-125m-layer-share"]
    assert shared.to_config()["num_hidden_layers"] == 30 and shared.to_config()["layer_sharing"] is True
    assert spec_from_config(shared.to_config(), "layer-share") == shared and shared.n_layer == 60


def test_synthetic_tokenizer_is_a_llama2_sized_sentencepiece_model(v1_files: dict[str, Path], tmp_path: Path) -> None:
    folder = v1_files["v1-125m"].parent / SYNTHETIC_FOLDER_NAMES["v1-125m"]
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert processor.vocab_size() == 32000
    assert (processor.unk_id(), processor.bos_id(), processor.eos_id()) == (0, 1, 2)
    assert all(processor.IsByte(3 + byte) for byte in range(256))
    assert len(processor.encode("kotavi meruno")) <= 4  # pseudo-word pieces, not characters
    vocab = llama_cpp.Llama(str(v1_files["v1-125m"]), vocab_only=True, verbose=False)
    for text in TEXTS:
        expected = processor.encode(text)
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        assert vocab.detokenize(expected).decode().removeprefix(" ") == processor.decode(expected), text
    started = time.perf_counter()
    write_llama2_shaped_tokenizer(tmp_path)
    assert time.perf_counter() - started < 5
    assert (tmp_path / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()


def test_info_and_models_name_the_family(v1_files: dict[str, Path], isolated_store: Path) -> None:
    models = isolated_store / "models"
    models.mkdir(parents=True)
    stored = Path(shutil.copy(v1_files["v1-125m"], models))
    listing = run_cli("models")
    assert listing.returncode == 0, listing.stderr
    assert FAMILY in listing.stdout and "MobileLLMForCausalLM" in listing.stdout
    (row,) = json.loads(run_cli("models", "--json").stdout)
    assert row["description"] == FAMILY and row["source_architecture"] == "MobileLLMForCausalLM"
    info = run_cli("info", stored.stem)
    assert info.returncode == 0, info.stderr
    assert FAMILY in " ".join(info.stdout.split())
    details = json.loads(run_cli("info", str(stored), "--json").stdout)
    assert details["description"] == FAMILY and details["chat_template"] is False and details["runnable"] is True
    assert details["special_tokens"]["bos"] == {"id": 1, "text": "<s>"}


def test_solve_on_a_v1_file_uses_the_base_model_prompt(v1_files: dict[str, Path]) -> None:
    path = v1_files["v1-125m"]
    header = read_gguf_header(path)
    prompt_format = PromptFormat(header, load_vocabulary(header))
    problem = "What is 2 + 3?"
    prompt = prompt_format.render(problem_messages(problem, get_preset("math")))
    assert prompt == (
        "Please reason step by step, and put your final answer within \\boxed{}.\n\nQuestion: What is 2 + 3?\nAnswer:"
    )
    assert prompt_format.stop_texts == ("\nQuestion:", "\nAnswer:")
    result = run_cli("solve", problem, "--model", str(path), "--max-tokens", "8", "--seed", "1", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["model"]["family"] == FAMILY
    assert record["prompt_tokens"] == len(prompt_format.tokenize(prompt))
    assert 1 <= record["tokens"] <= 8 and "Question:" not in record["output"]
    shown = run_cli("solve", problem, "--model", str(path), "--max-tokens", "4", "--seed", "1")
    assert shown.returncode == 0, shown.stderr
    assert f"{path.name} · {FAMILY} · task math" in " ".join(shown.stderr.split())


def test_chat_names_the_family(v1_files: dict[str, Path]) -> None:
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    arguments = ["chat", "--model", str(v1_files["v1-125m"]), "--threads", "1", "--max-tokens", "4", "--seed", "1"]
    child = pexpect.spawn(MLLM_CPU, arguments, env=env, encoding="utf-8", timeout=60, dimensions=(50, 250))
    child.expect(f"{v1_files['v1-125m'].name} · {FAMILY} · context")
    child.expect(">>>")
    child.sendline("Hello there")
    child.expect("reply cut at --max-tokens 4")
    child.expect(">>>")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_solve_file_compares_v1_and_r1_side_by_side(
    v1_files: dict[str, Path], synthetic_tiny_gguf: Path, tmp_path: Path
) -> None:
    problems = tmp_path / "problems.jsonl"
    lines = [json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(2)]
    problems.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    pair = ("--model", str(v1_files["v1-125m"]), "--model", str(synthetic_tiny_gguf))
    flags = ("--max-tokens", "6", "--threads", "1", "--seed", "5")
    result = run_cli("solve", "--file", str(problems), *pair, *flags, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [row["model"]["family"] for row in data["models"]] == [FAMILY, R1_FAMILY]
    assert all(row["finished"] == 2 for row in data["models"])
    table = run_cli("solve", "--file", str(problems), *pair, *flags)  # resumed: both already done
    assert table.returncode == 0, table.stderr
    assert "2 problems on 2 models" in table.stdout and FAMILY in table.stdout and R1_FAMILY in table.stdout


def test_bench_measures_v1_and_r1_side_by_side(v1_files: dict[str, Path], synthetic_tiny_gguf: Path) -> None:
    """Without --ctx each model is measured at 4096 tokens, or at its trained context if shorter (v1: 2048)."""
    files = [v1_files["v1-125m-layer-share"], synthetic_tiny_gguf]
    flags = ("-p", "8", "-n", "4", "-r", "1", "--no-warmup", "--no-bandwidth", "-t", "1")
    result = run_cli("bench", *map(str, files), *flags, "--json")
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)["models"]
    assert [(m["path"], m["n_layer"], m["fit"]["n_ctx"]) for m in measured] == [
        (str(files[0]), 60, 2048),
        (str(files[1]), 2, 4096),
    ]
    too_long = run_cli("bench", *map(str, files), *flags, "--ctx", "4096")
    assert too_long.returncode == 2
    assert error_lines(too_long) == [f"error: --ctx 4096 exceeds the training context of {files[0].name} (2048)"]


def test_repair_leaves_a_community_v1_file_and_refuses_a_half_layer_share_one(
    v1_files: dict[str, Path], tmp_path: Path
) -> None:
    dropped: dict[str, object] = dict.fromkeys(OUR_KEYS)
    community = rewrite_gguf(v1_files["v1-125m"], tmp_path / "community-125m.gguf", dropped)
    fine = run_cli("repair", str(community), "--json")
    assert fine.returncode == 0, fine.stderr
    note = json.loads(fine.stdout)
    assert note["repaired"] is False and note["note"].endswith("needs no repair: llama.cpp runs it as it is (llama)")

    named = {**dropped, gguf.Keys.General.NAME: "MobileLLM-125M-layer-share"}
    half = rewrite_gguf(v1_files["v1-125m"], tmp_path / "half.gguf", named)
    for args in (("repair", str(half)), ("solve", "What is 2+2?", "--model", str(half))):
        result = run_cli(*args)
        assert result.returncode == 2
        assert error_lines(result) == [
            f"error: {half}: named layer-share, but holds MobileLLM v1's 30 blocks once each; the layer-share model "
            "runs every block twice (60 layers), so this file computes another function and is not repaired; "
            "convert the checkpoint with `mllm-cpu convert`, which writes each block twice"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["community-125m.gguf", "half.gguf"]
