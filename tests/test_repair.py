"""`repair` turns the MobileLLM-R1 GGUFs that llama.cpp's own converter writes into runnable qwen3 files.

The broken files are made as users got them: llama.cpp's convert_hf_to_gguf.py (from the
llama-cpp-python sdist) on a tiny real Llama4ForCausalLM, at F16 and Q8_0, and llama.cpp's
quantizer on that F16 file for a K-quant and a legacy quant.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from helpers.checkpoints import reference_logits
from helpers.cli_runner import error_lines, files_in, run_cli
from helpers.llama_cpp_sources import convert_with_llama_cpp
from helpers.logits import ERROR_BUDGET, F32_KV, UNIT_ROUNDOFF, assert_clear_top1_kept, llama_logits, prompt_ids
from mllm_cpu.convert.gguf_header import GGUFHeader, read_gguf_header
from mllm_cpu.convert.llama_quantizer import quantize_with_llama_cpp
from mllm_cpu.convert.quant_types import QUANT_LEVELS
from mllm_cpu.convert.repair import needs_repair, repair_gguf
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.model_file import validate_model_file

CONVERTER_TYPES = ("f16", "q8_0")
QUANTIZER_TYPES = ("q4_k_m", "q4_0")
TYPES = CONVERTER_TYPES + QUANTIZER_TYPES


@pytest.fixture(scope="module")
def broken(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """llama4 zero-expert files of the tiny checkpoint, each made by llama.cpp's own tools."""
    folder = tmp_path_factory.mktemp("broken")
    files = {t: convert_with_llama_cpp(tiny_checkpoint, folder / f"upstream-{t}.gguf", t) for t in CONVERTER_TYPES}
    return _with_quantized(files, folder / "upstream")


@pytest.fixture(scope="module")
def ours(tiny_ggufs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our own conversion at each type; the 4-bit ones quantized by llama.cpp from our F16 file, like `broken`."""
    folder = tmp_path_factory.mktemp("ours")
    return _with_quantized({t: tiny_ggufs[t] for t in CONVERTER_TYPES}, folder / "ours")


def _with_quantized(files: dict[str, Path], stem: Path) -> dict[str, Path]:
    """`files` and llama.cpp's quantizations of its F16 file (STEM-TYPE.gguf) at QUANTIZER_TYPES."""
    for name in QUANTIZER_TYPES:
        files[name] = stem.with_name(f"{stem.name}-{name}.gguf")
        quantize_with_llama_cpp(files["f16"], files[name], QUANT_LEVELS[name])
    return files


@pytest.fixture(scope="module")
def repaired(broken: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("repaired")
    for name, path in broken.items():
        repair_gguf(path, folder / f"repaired-{name}.gguf")
    return {name: folder / f"repaired-{name}.gguf" for name in broken}


def _tensor_bytes(header: GGUFHeader) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with header.path.open("rb") as handle:
        found = {}
        for tensor in header.tensors:
            handle.seek(header.data_start + tensor.offset)
            found[tensor.name] = (tensor.type.name, tensor.shape, handle.read(tensor.n_bytes))
    return found


@pytest.mark.parametrize("name", TYPES)
def test_stock_llama_cpp_refuses_the_upstream_file_and_we_name_repair(broken: dict[str, Path], name: str) -> None:
    header = read_gguf_header(broken[name])
    assert header.architecture == "llama4" and header.get(gguf_keys.arch_key(gguf.Keys.LLM.EXPERT_COUNT, "llama4")) == 0
    assert needs_repair(broken[name])
    with pytest.raises(ValueError):
        llama_cpp.Llama(str(broken[name]), verbose=False)
    with pytest.raises(InputError, match="mllm-cpu repair"):
        validate_model_file(broken[name])


@pytest.mark.parametrize(
    "command", [("chat",), ("solve", "What is 2+2?"), ("bench", "-p", "8", "-n", "4", "-r", "1", "--no-bandwidth")]
)
def test_commands_name_repair_for_an_upstream_file(broken: dict[str, Path], command: tuple[str, ...]) -> None:
    model = ("--model", str(broken["q8_0"])) if command[0] != "bench" else (str(broken["q8_0"]),)
    result = run_cli(*command, *model, input_text="Hi\n")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "llama4 file with zero experts" in line and f"mllm-cpu repair {broken['q8_0']}" in line


@pytest.mark.parametrize("name", TYPES)
def test_repaired_tensors_are_byte_identical_to_our_conversion(
    repaired: dict[str, Path], ours: dict[str, Path], name: str
) -> None:
    """Row moves on raw bytes: every tensor of the repair equals ours exactly (F16, Q8_0, K- and legacy quants)."""
    got, expected = _tensor_bytes(read_gguf_header(repaired[name])), _tensor_bytes(read_gguf_header(ours[name]))
    assert set(got) == set(expected)
    assert [n for n in got if got[n] != expected[n]] == []
    assert not needs_repair(repaired[name])


def test_metadata_is_carried_over_and_provenance_recorded(broken: dict[str, Path], repaired: dict[str, Path]) -> None:
    source = gguf.GGUFReader(broken["q8_0"])
    result = gguf.GGUFReader(repaired["q8_0"])
    values = {name: field.contents() for name, field in result.fields.items()}
    assert values[gguf_keys.ARCHITECTURE] == "qwen3"
    assert values[gguf_keys.REPAIRED_FROM] == broken["q8_0"].name
    assert values[gguf_keys.ORIGIN] == "repaired"
    assert values[gguf_keys.SOURCE_ARCHITECTURE] == "Llama4ForCausalLM"
    assert not [key for key in values if key.startswith("llama4.") or "expert" in key or "sliding" in key]
    for key, field in source.fields.items():
        if key.startswith(("tokenizer.", "general.")) and key != gguf_keys.ARCHITECTURE:
            assert values[key] == field.contents(), key
        if key.startswith("llama4.") and not any(word in key for word in ("expert", "moe", "sliding")):
            assert values[key.replace("llama4.", "qwen3.", 1)] == field.contents(), key
    assert validate_model_file(repaired["q8_0"]).description == "MobileLLM-R1 (Llama4 dense), run as qwen3"


@pytest.mark.parametrize("name", CONVERTER_TYPES)
def test_repaired_logits_equal_transformers_and_our_conversion(
    tiny_checkpoint: Path, repaired: dict[str, Path], ours: dict[str, Path], name: str
) -> None:
    ids = prompt_ids(tiny_checkpoint, 60)
    reference = reference_logits(tiny_checkpoint, ids)
    got = llama_logits(repaired[name], ids, **F32_KV)
    tolerance = ERROR_BUDGET * UNIT_ROUNDOFF[name] * np.abs(reference).max()
    assert np.abs(got - reference).max() < tolerance
    assert np.array_equal(got, llama_logits(ours[name], ids, **F32_KV))


@pytest.mark.parametrize("name", QUANTIZER_TYPES)
def test_repaired_4bit_files_keep_clear_top1_decisions(
    tiny_checkpoint: Path, repaired: dict[str, Path], name: str
) -> None:
    """As for our own 4-bit files (see test_convert_numerics): clear top-1 choices kept, logits correlated."""
    ids = prompt_ids(tiny_checkpoint, 200)
    reference = reference_logits(tiny_checkpoint, ids)
    assert_clear_top1_kept(llama_logits(repaired[name], ids), reference)


def test_repair_command(broken: dict[str, Path], tmp_path: Path, isolated_store: Path) -> None:
    outdir = tmp_path / "out"
    result = run_cli("repair", str(broken["q8_0"]), "--outdir", str(outdir), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    written = Path(record["file"])
    assert record["repaired"] is True and written.parent == outdir
    assert files_in(outdir) == [written.name]
    assert validate_model_file(written).header.get(gguf_keys.REPAIRED_FROM) == broken["q8_0"].name

    again = run_cli("repair", str(broken["q8_0"]), "--outdir", str(outdir))
    assert again.returncode == 2
    assert error_lines(again) == [f"error: {written} already exists (use --force to overwrite)"]
    assert run_cli("repair", str(broken["q8_0"]), "--outdir", str(outdir), "--force").returncode == 0

    fine = run_cli("repair", str(written), "--json")
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout)["repaired"] is False and "needs no repair" in json.loads(fine.stdout)["note"]
    assert files_in(outdir) == [written.name]

    stored = run_cli("repair", str(broken["f16"]), "--store", "--name", "R1-tiny-fixed")
    assert stored.returncode == 0, stored.stderr
    assert "Repaired" in stored.stdout and "R1-tiny-fixed.gguf" in stored.stdout
    assert files_in(isolated_store / "models") == ["R1-tiny-fixed.gguf"]


def test_repair_of_a_damaged_file_writes_nothing(broken: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "in" / "damaged.gguf"
    damaged.parent.mkdir()
    shutil.copyfile(broken["f16"], damaged)
    with damaged.open("r+b") as handle:
        handle.truncate(damaged.stat().st_size - 4096)
    result = run_cli("repair", str(damaged), "--outdir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "truncated" in result.stderr
    assert files_in(tmp_path / "out") == []


def _relabelled_as_llama(source: Path, target: Path) -> Path:
    """A `llama` copy of an upstream llama4 file, as hand-relabelled community files are."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == gguf_keys.ARCHITECTURE or "expert" in key or "sliding" in key:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key.replace("llama4.", "llama.", 1), field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def test_a_relabelled_llama_file_is_refused_with_the_reason(
    tiny_checkpoint: Path, broken: dict[str, Path], tmp_path: Path
) -> None:
    relabelled = _relabelled_as_llama(broken["f16"], tmp_path / "relabelled.gguf")
    ids = prompt_ids(tiny_checkpoint, 60)
    wrong = np.abs(llama_logits(relabelled, ids, **F32_KV) - reference_logits(tiny_checkpoint, ids)).max()
    assert wrong > 1.0  # llama.cpp loads it, and computes something else (no q/k norm, other RoPE pairs)
    for args in (("repair", str(relabelled)), ("solve", "What is 2+2?", "--model", str(relabelled))):
        result = run_cli(*args)
        assert result.returncode == 2
        assert len(error_lines(result)) == 1 and "relabelled llama4 conversion" in result.stderr
