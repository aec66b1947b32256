"""`mllm-cpu bench` and `mllm-cpu doctor` as a user runs them: results, files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli_runner import error_lines, run_cli


@pytest.fixture
def corrupt_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    return path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["/nowhere/model.gguf"], "no such model file"),
        (["{corrupt}"], "broken.gguf"),
        (["{tiny}", "--board", "rpi3"], "unknown board rpi3"),
        (["--synthetic", "140m", "--quant", "q9_9"], "unknown quant type q9_9"),
        (["--synthetic", "2b"], "unknown synthetic model 2b"),
        (["{tiny}", "-t", "0"], "-t/--threads must be at least 1, got 0"),
        (["{tiny}", "-t", "two"], "-t/--threads takes comma-separated integers"),
        (["{tiny}", "-r", "0"], "-r/--repetitions must be at least 1"),
        (["{tiny}", "-d", "-4"], "-d/--n-depth must be at least 0, got -4"),
        (["{tiny}", "-fa", "maybe"], "-fa/--flash-attn takes on, off or auto, got 'maybe'"),
        (["{tiny}", "-d", "1000000"], "depth included) exceeds the training context"),
        (["{tiny}", "-p", "0", "-n", "0"], "nothing to measure"),
        (["{tiny}", "--ctx", "100000"], "exceeds the training context"),
        (["{tiny}", "--quant", "q4_0"], "--quant applies to --synthetic models only"),
        (["{tiny}", "--json", "--csv"], "choose one of --json, --csv and --md"),
        (["{tiny}", "--out", "{tmp}/result.txt"], "say the format"),
        (["{tiny}", "--out", "{tmp}/missing/result.json"], "does not exist"),
        ([], "give GGUF files"),
        (["{tiny}", "--parallel", "0"], "--parallel must be between 1 and 64, got 0"),
        (["{tiny}", "--parallel", "1,x"], "--parallel takes comma-separated integers"),
        (["--synthetic", "140m", "--parallel", "2"], "bench --parallel LEVELS MODEL: name exactly one model"),
        (["{tiny}", "--parallel", "2", "-n", "1"], "-n/--n-gen must be at least 2"),
        (["{tiny}", "--parallel", "2", "--ctx", "64", "-n", "60"], "do not fit --ctx 64"),
    ],
)
def test_bad_options_and_files_are_one_clear_line(
    arguments: list[str], message: str, corrupt_gguf: Path, synthetic_tiny_gguf: Path, tmp_path: Path
) -> None:
    filled = [a.format(corrupt=corrupt_gguf, tiny=synthetic_tiny_gguf, tmp=tmp_path) for a in arguments]
    result = run_cli("bench", *filled, "--no-bandwidth")
    lines = error_lines(result)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert "Traceback" not in result.stderr


def test_synthetic_models_are_converted_once_into_the_store(isolated_store: Path, tmp_path: Path) -> None:
    arguments = ["bench", "--synthetic", "tiny", "--quant", "q8_0", "-p", "16", "-n", "4", "-r", "1", "-c", "256"]
    first = run_cli(*arguments, "--json")
    assert first.returncode == 0, first.stderr
    run = json.loads(first.stdout)
    (model,) = run["models"]
    gguf = Path(model["path"])
    assert gguf.parent == isolated_store / "models" and gguf.name.startswith("MobileLLM-R1-tiny-synthetic")
    assert gguf.name.endswith("-Q8_0.gguf")
    assert (isolated_store / "checkpoints" / "MobileLLM-R1-tiny-synthetic" / "model.safetensors").is_file()
    assert [(r["test"], r["counted_tokens"]) for r in run["results"]] == [("pp16", [16]), ("tg4", [4])]
    assert run["bandwidth"]["best"] > 0 and run["results"][1]["roofline_ts"] > 0
    written = gguf.stat().st_mtime_ns

    report = tmp_path / "pi.md"
    second = run_cli(*arguments, "--no-bandwidth", "--board", "pi-zero-2", "--out", str(report))
    assert second.returncode == 0, second.stderr
    assert gguf.stat().st_mtime_ns == written
    assert "pi-zero-2" in report.read_text() and "tg4" in report.read_text()
    assert "Memory fit at context 256" in second.stdout and "pp16" in second.stdout


def test_doctor_reports_the_machine_and_versions() -> None:
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["machine"]["physical_cores"] >= 1 and facts["machine"]["cpu_model"]
    assert facts["machine"]["llama_system_info"].startswith("CPU")
    assert facts["versions"]["llama-cpp-python"] == "0.3.36"
    table = run_cli("doctor")
    assert table.returncode == 0 and "SIMD features" in table.stdout and "numpy" in table.stdout


def test_a_context_smaller_than_the_ubatch_is_measured_not_aborted(synthetic_tiny_gguf: Path) -> None:
    """llama.cpp clamps n_batch to a small context; a prompt batch larger than it would abort the process."""
    result = run_cli(
        "bench", str(synthetic_tiny_gguf), "--ctx", "128", "-p", "8", "-n", "4", "-r", "1", "--no-bandwidth", "--json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and "Traceback" not in result.stderr


def test_depth_and_flash_attention_as_llama_bench_takes_them(synthetic_tiny_gguf: Path) -> None:
    common = ("bench", str(synthetic_tiny_gguf), "-p", "8", "-n", "4", "-d", "0,16", "-fa", "on,off", "-r", "1")
    result = run_cli(*common, "--no-bandwidth", "--json")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [(r["flash_attn"], r["test"], r["n_depth"]) for r in results] == [
        ("on", "pp8", 0),
        ("on", "tg4", 0),
        ("on", "pp8 @ d16", 16),
        ("on", "tg4 @ d16", 16),
        ("off", "pp8", 0),
        ("off", "tg4", 0),
        ("off", "pp8 @ d16", 16),
        ("off", "tg4 @ d16", 16),
    ]
    table = run_cli(*common, "--no-bandwidth")
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "test" in line and "t/s" in line)
    assert " fa " in header
    assert sum(" tg4 @ d16 " in line for line in table.stdout.splitlines()) == 2
    assert "flash attention off as in chat and solve" in table.stdout


def test_parallel_levels_decode_together_with_the_memory_of_each_level(synthetic_tiny_gguf: Path) -> None:
    result = run_cli(
        "bench", str(synthetic_tiny_gguf), "--parallel", "1,3", "-n", "6", "--ctx", "256", "-t", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert [level["concurrency"] for level in run["results"]] == [1, 3]
    for level in run["results"]:
        assert len(level["requests"]) == level["concurrency"] and not level["errors"]
        assert all(request["tokens"] == 6 for request in level["requests"])  # end-of-generation masked
        assert level["aggregate_ts"] > 0 and level["ttft_ms"] > 0
    one, three = run["fits"]
    assert (one["sequences"], three["sequences"]) == (1, 3)
    assert three["kv_bytes"] == 3 * one["kv_bytes"] and three["weight_bytes"] == one["weight_bytes"]
    assert three["max_context"] <= one["max_context"]
    table = run_cli("bench", str(synthetic_tiny_gguf), "--parallel", "2", "-n", "4", "--ctx", "256", "-t", "1")
    assert table.returncode == 0, table.stderr
    assert "Batched decoding" in table.stdout and "Memory fit" in table.stdout
    lines = table.stdout.splitlines()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│ local")]
    assert [row[2] for row in rows] == ["2"]  # one level, its concurrency column
