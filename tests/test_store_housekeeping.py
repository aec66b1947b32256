"""Store housekeeping: `mllm-cpu rm`, and where each stored file came from (`models` origin column)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers.cli_runner import error_lines, files_in, run_cli
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.origin import Origin
from mllm_cpu.listing import store_listing
from mllm_cpu.model_info import describe_model
from mllm_cpu.store import find_stored, origin_record, write_origin_record


@pytest.fixture()
def store(tiny_ggufs: dict[str, Path], isolated_store: Path) -> Path:
    """Three files in the store, one of them pulled as-is (with its origin record)."""
    models = isolated_store / "models"
    models.mkdir(parents=True)
    shutil.copy(tiny_ggufs["q8_0"], models / "MobileLLM-R1-tiny-Q8_0.gguf")
    shutil.copy(tiny_ggufs["q4_0"], models / "MobileLLM-R1-tiny-Q4_0.gguf")
    pulled = Path(shutil.copy(tiny_ggufs["q8_0"], models / "Other-Q8_0.gguf"))
    write_origin_record(pulled, Origin("pulled", "someone/Other-GGUF@0123456789ab"))
    return models


def test_rm_deletes_files_and_their_records(store: Path) -> None:
    result = run_cli("rm", "MobileLLM-R1-tiny-Q8", "Other")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["deleted MobileLLM-R1-tiny-Q8_0", "deleted Other-Q8_0"]
    assert files_in(store) == ["MobileLLM-R1-tiny-Q4_0.gguf"]


def test_rm_refuses_ambiguous_and_unknown_names_before_deleting_anything(store: Path) -> None:
    before = files_in(store)
    result = run_cli("rm", "MobileLLM-R1-tiny-Q4_0", "MobileLLM-R1-tiny")
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith("error: MobileLLM-R1-tiny: matches 2 models")
    assert "MobileLLM-R1-tiny-Q4_0, MobileLLM-R1-tiny-Q8_0" in line
    with pytest.raises(InputError, match="no such model in the store"):
        find_stored("Nothing-like-this")
    assert find_stored("other-q8_0.gguf").name == "Other-Q8_0.gguf"  # exact names, any case, with suffix
    assert files_in(store) == before


def test_models_shows_where_each_file_came_from(store: Path, tiny_checkpoint: Path) -> None:
    converted = convert_checkpoint(tiny_checkpoint, parse_quant_list("q8_0"), store)[0].summary.path
    origin_record(store / "MobileLLM-R1-tiny-Q4_0.gguf").write_text("not json")  # a damaged record is ignored
    origins = {row.name: row.origin for row in store_listing()}
    assert origins == {
        converted.stem: Origin("converted", tiny_checkpoint.name),
        "MobileLLM-R1-tiny-Q8_0": Origin("converted", tiny_checkpoint.name),  # copies of the fixture's conversion
        "MobileLLM-R1-tiny-Q4_0": Origin("converted", tiny_checkpoint.name),
        "Other-Q8_0": Origin("pulled", "someone/Other-GGUF@0123456789ab"),
    }
    assert describe_model(store / "Other-Q8_0.gguf").origin.describe() == "pulled someone/Other-GGUF@0123456789ab"
    shown = run_cli("models")
    assert shown.returncode == 0, shown.stderr
    assert "origin" in shown.stdout and "pulled someone/Other-GGUF@0123456789ab" in shown.stdout


def test_origin_of_repaired_and_foreign_files() -> None:
    pulled_and_repaired = {
        gguf_keys.ORIGIN: "pulled",
        gguf_keys.ORIGIN_SOURCE: "someone/R1-GGUF@0123456789ab",
        gguf_keys.REPAIRED_FROM: "R1.Q4_K_M.gguf",
    }
    assert Origin.from_metadata(pulled_and_repaired).describe() == "pulled someone/R1-GGUF@0123456789ab, repaired"
    assert Origin.from_metadata({gguf_keys.REPAIRED_FROM: "R1.Q4_K_M.gguf"}) == Origin("repaired", "R1.Q4_K_M.gguf")
    assert Origin.from_metadata({gguf_keys.ARCHITECTURE: "llama"}).describe() == "unknown"
