"""`mllm-cpu models` and `mllm-cpu info`: the store as a table or JSON, one file's metadata."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.cli_runner import MLLM_CPU, run_cli
from helpers.small_gguf import write_small_gguf
from mllm_cpu.commands.console import print_table, table
from mllm_cpu.listing import LISTING_CACHE, store_listing
from mllm_cpu.model_info import describe_model


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables are not folded to 80 columns, so cells can be found whole."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture()
def stored_tiny(synthetic_tiny_gguf: Path, isolated_store: Path) -> Path:
    models = isolated_store / "models"
    models.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(synthetic_tiny_gguf, models / synthetic_tiny_gguf.name))


def test_models_with_an_empty_store_says_how_to_get_one() -> None:
    result = run_cli("models")
    assert result.returncode == 0
    assert "mllm-cpu convert --synthetic 140m --store" in result.stderr.replace("\n", " ")
    listed = run_cli("models", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_models_lists_the_store(stored_tiny: Path) -> None:
    (stored_tiny.parent / "broken.gguf").write_bytes(b"GGUF" + b"\x00" * 40)
    rows = store_listing()
    assert [row.name for row in rows] == ["MobileLLM-R1-tiny-synthetic-17M-Q8_0", "broken"]
    tiny = rows[0]
    assert tiny.quant == "Q8_0" and tiny.context_length == 4096
    assert tiny.source_architecture == "Llama4ForCausalLM"
    assert tiny.bytes == stored_tiny.stat().st_size and tiny.parameters > 16_000_000
    assert rows[1].error is not None and "broken.gguf" in rows[1].error
    assert set(rows[1].to_dict()) == {"name", "file", "error"}

    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    for text in ("MobileLLM-R1-tiny-synthetic-17M-Q8_0", "Q8_0", "4096", "Llama4ForCausalLM", "unreadable"):
        assert text in result.stdout
    listed = json.loads(run_cli("models", "--json").stdout)
    assert listed == json.loads(json.dumps([row.to_dict() for row in rows]))


def test_info_shows_the_metadata(stored_tiny: Path) -> None:
    details = describe_model(stored_tiny).to_dict()
    assert details["architecture"] == "qwen3"
    assert details["description"] == "MobileLLM-R1 (Llama4 dense), run as qwen3"
    assert details["vocab_size"] == 128256 and details["context_length"] == 4096
    assert details["special_tokens"]["bos"] == {"id": 128000, "text": "<|begin_of_text|>"}
    assert details["special_tokens"]["eot"] == {"id": 128009, "text": "<|eot_id|>"}
    assert details["chat_template"] is True and details["runnable"] is True
    assert set(details["type_mix"]) == {"q8_0", "f32"}
    assert details["bits_per_weight"] > 8

    result = run_cli("info", "MobileLLM-R1-tiny")
    assert result.returncode == 0, result.stderr
    flat = " ".join(result.stdout.split())
    for text in (
        "MobileLLM-R1 (Llama4 dense), run as qwen3",
        "q8_0",
        "128256",
        "<|eot_id|>",
        "chat template │ yes",
        "bits/weight",
    ):
        assert text in flat
    as_json = json.loads(run_cli("info", str(stored_tiny), "--json").stdout)
    assert as_json == json.loads(json.dumps(details))


def test_info_on_a_file_this_package_cannot_run(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "upstream.gguf", "llama4", expert_count=0)
    result = run_cli("info", str(path), "--json")
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["architecture"] == "llama4" and details["runnable"] is False
    assert "zero experts" in details["problem"]
    shown = run_cli("info", str(path))
    assert "cannot run this file" in shown.stderr


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("nothing-like-this", "not a file, a checkpoint folder, or a model in the store"),
        ("/no/such/file.gguf", "no such model file"),
    ],
)
def test_info_errors(argument: str, message: str) -> None:
    result = run_cli("info", argument)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


def test_piped_listing_keeps_every_long_row_whole(
    stored_tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mllm-cpu models | grep NAME` finds each row, whole, however long the names and however narrow COLUMNS is."""
    monkeypatch.setenv("COLUMNS", "80")
    names = [f"MobileLLM-R1-{'long-' * 24}{index}-Q8_0" for index in range(3)]
    for name in names:
        (stored_tiny.parent / f"{name}.gguf").hardlink_to(stored_tiny)
    for name in names:
        piped = subprocess.run(
            f"{shlex.quote(MLLM_CPU)} models | grep -F -- {shlex.quote(name)}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert piped.returncode == 0, piped.stderr
        [line] = piped.stdout.splitlines()
        assert len(line) > 80
        for cell in ("Q8_0", "MiB", "4096", "Llama4ForCausalLM"):
            assert cell in line, line


def test_tables_right_align_numeric_columns(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [["a", "1.00 KiB", "Q8_0", "4096"], ["bb", "146.30 MiB", "F16", "-"], ["c", "12 B", "Q4_K_M", "32768"]]
    print_table(table("t", ["name", "size", "quant", "context"], rows))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert len(lines) == 3
    cells = [line.strip("│").split("│") for line in lines]
    assert len({len(row[1].rstrip()) for row in cells}) == 1, "sizes end at one column"
    assert len({len(row[1].lstrip()) for row in cells}) == 3, "so they start at different ones"
    assert len({len(row[2]) - len(row[2].lstrip()) for row in cells}) == 1, "quant types start at one column"
    assert len({len(row[3].rstrip()) for row in cells}) == 1, "contexts end at one column, the '-' too"


def _listed(*args: str) -> list[dict[str, object]]:
    """`mllm-cpu models --json`, which must succeed."""
    result = run_cli("models", "--json", *args)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_models_keeps_its_rows_and_reads_only_a_changed_file(
    stored_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLLM_CPU_CACHE", str(tmp_path / "cache"))
    [first] = _listed()
    cache = tmp_path / "cache" / LISTING_CACHE
    kept = json.loads(cache.read_text())
    assert list(kept) == [str(stored_tiny)] and kept[str(stored_tiny)]["value"]["quant"] == "Q8_0"

    # a row under the file's own size, mtime and inode is the listing's: the header is not read again
    kept[str(stored_tiny)]["value"]["quant"] = "FROM-THE-CACHE"
    cache.write_text(json.dumps(kept))
    assert [row["quant"] for row in _listed()] == ["FROM-THE-CACHE"]

    # a rewritten file (another size and mtime) is read again, and its new row is kept
    write_small_gguf(stored_tiny, "qwen3")
    [changed] = _listed()
    assert changed["quant"] != "FROM-THE-CACHE" and changed["bytes"] == stored_tiny.stat().st_size != first["bytes"]
    assert json.loads(cache.read_text())[str(stored_tiny)]["value"]["bytes"] == changed["bytes"]


@pytest.mark.parametrize("kind", ["garbage", "a list", "bad rows", "a folder", "a fifo"])
def test_models_lists_through_a_broken_cache(
    kind: str, stored_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLLM_CPU_CACHE", str(tmp_path))
    expected = _listed()
    cache = tmp_path / LISTING_CACHE
    good = json.loads(cache.read_text())
    cache.unlink()
    if kind == "garbage":
        cache.write_bytes(b"\xff\x00{" * 1000)
    elif kind == "a list":
        cache.write_text("[1, 2, 3]")
    elif kind == "bad rows":
        entry = good[str(stored_tiny)]
        cache.write_text(
            json.dumps({str(stored_tiny): {"key": entry["key"], "value": {**entry["value"], "bytes": "many"}}})
        )
    elif kind == "a folder":
        cache.mkdir()
    else:
        os.mkfifo(cache)
    assert _listed() == expected
    if kind != "a folder":  # a folder in the way stays: the listing is made without a cache
        assert json.loads(cache.read_text()) == good


def test_models_lists_where_the_cache_cannot_be_written(stored_tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_CPU_CACHE", "/dev/null/cache")
    [row] = _listed()
    assert row["quant"] == "Q8_0"
