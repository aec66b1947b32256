"""Batch records name their model and settings; several models side by side; the store's default model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.checkpoints import TINY_GQA2, build_checkpoint
from helpers.cli_runner import run_cli
from mllm_cpu.batch import BatchSettings, NotResumable, read_results, run_batch
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.engine import Engine
from mllm_cpu.identity import file_identity
from mllm_cpu.problems import load_problems
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.store import resolve_model

FLAGS = ("--threads", "1", "--seed", "5", "--temperature", "0.8")


def _problems(path: Path, count: int = 3) -> Path:
    lines = [
        json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(count)
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bigger_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A second tiny checkpoint with more parameters than TINY, converted to Q4_0 and F16."""
    folder = build_checkpoint(tmp_path_factory.mktemp("bigger") / "MobileLLM-R1-tiny-gqa2", TINY_GQA2)
    files = convert_checkpoint(folder, parse_quant_list("q4_0,f16"), folder.parent)
    return {f.level.name: f.summary.path for f in files}


def test_records_name_the_model_and_settings_and_a_mismatch_is_refused(
    tiny_ggufs: dict[str, Path], tmp_path: Path
) -> None:
    q8, f16 = tiny_ggufs["q8_0"], tiny_ggufs["f16"]
    problems = load_problems(_problems(tmp_path / "problems.jsonl"))
    out = tmp_path / "out.jsonl"
    options = SamplingOptions(seed=1, max_tokens=4)
    records = run_batch(Engine(q8, threads=1), problems, out, options=options)
    assert {record.model for record in records} == {file_identity(q8)}
    assert {record.settings for record in records} == {BatchSettings.of("auto", options)}
    line = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert line["model"] == {
        "model": q8.name,
        "size_bytes": q8.stat().st_size,
        "fingerprint": records[0].model.fingerprint,
        "endpoint": None,
        "family": "MobileLLM-R1 (Llama4 dense), run as qwen3",
    }
    assert line["settings"]["max_tokens"] == 4 and line["settings"]["seed"] == 1 and line["settings"]["task"] == "auto"
    before = out.read_bytes()

    with pytest.raises(NotResumable, match="--max-tokens 4 there, 8 now"):
        run_batch(Engine(q8, threads=1), problems, out, options=replace(options, max_tokens=8))
    with pytest.raises(NotResumable, match=f"model {q8.name} there, {f16.name} now"):
        run_batch(Engine(f16, threads=1), problems, out, options=options)
    renamed = tmp_path / q8.name
    shutil.copy(f16, renamed)
    with pytest.raises(NotResumable, match=f"model {q8.name} with other contents"):
        run_batch(Engine(renamed, threads=1), problems, out, options=options)
    assert out.read_bytes() == before


def test_cli_refuses_to_resume_with_other_settings_and_force_sets_the_file_aside(
    tiny_ggufs: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_ggufs["q8_0"]
    problems = _problems(tmp_path / "problems.jsonl", 2)
    results = tmp_path / f"problems-results-{model.stem}.jsonl"
    first = run_cli("solve", "--file", str(problems), "--model", str(model), "--max-tokens", "4", *FLAGS)
    assert first.returncode == 0, first.stderr
    before = results.read_bytes()

    refused = run_cli("solve", "--file", str(problems), "--model", str(model), "--max-tokens", "6", *FLAGS)
    assert refused.returncode == 2 and refused.stdout == ""
    lines = _error_lines(refused.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {results} holds other results")
    assert "--max-tokens 4 there, 6 now" in lines[0] and "--force" in lines[0]
    assert results.read_bytes() == before

    forced = run_cli("solve", "--file", str(problems), "--model", str(model), "--max-tokens", "6", "--force", *FLAGS)
    assert forced.returncode == 0, forced.stderr
    aside = tmp_path / f"problems-results-{model.stem}.1.jsonl"
    assert f"now in {aside}" in forced.stderr.replace("\n", "")
    assert aside.read_bytes() == before
    assert [record.settings.max_tokens for record in read_results(results)] == [6, 6]


def test_side_by_side_models_keep_their_own_resumable_files_and_end_with_one_table(
    tiny_ggufs: dict[str, Path], tmp_path: Path
) -> None:
    models = [tiny_ggufs["q8_0"], tiny_ggufs["f16"]]
    problems = _problems(tmp_path / "problems.jsonl")
    pair = ("--model", str(models[0]), "--model", str(models[1]))
    files = [tmp_path / f"problems-results-{model.stem}.jsonl" for model in models]

    first = run_cli("solve", "--file", str(problems), *pair, "--limit", "2", "--max-tokens", "6", "--json", *FLAGS)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["problems"] == 2 and data["interrupted"] is False
    assert [row["model"] for row in data["models"]] == [file_identity(model).to_dict() for model in models]
    assert [row["results"] for row in data["models"]] == [str(path) for path in files]
    assert [row["quant"] for row in data["models"]] == ["Q8_0", "F16"]
    assert all(row["finished"] == 2 and row["tokens_per_second"] > 0 for row in data["models"])
    started = [path.read_bytes() for path in files]
    for model, path in zip(models, files, strict=True):
        assert [(record.id, record.model) for record in read_results(path)] == [
            ("q0", file_identity(model)),
            ("q1", file_identity(model)),
        ]

    resumed = run_cli("solve", "--file", str(problems), *pair, "--max-tokens", "6", *FLAGS)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("resuming: 2 of 3 problems already there") == 2
    for model, path, before in zip(models, files, started, strict=True):
        assert path.read_bytes().startswith(before)
        assert [record.id for record in read_results(path)] == ["q0", "q1", "q2"]
        assert {record.model for record in read_results(path)} == {file_identity(model)}
    assert resumed.stdout.count("3 problems on 2 models") == 1
    assert "Q8_0" in resumed.stdout and "F16" in resumed.stdout and "3/3" in resumed.stdout


def test_default_model_is_the_biggest_valid_4bit_file_and_is_named(
    tiny_ggufs: dict[str, Path], bigger_ggufs: dict[str, Path], synthetic_tiny_gguf: Path, isolated_store: Path
) -> None:
    store = isolated_store / "models"
    store.mkdir()
    (store / "AAA-Q4_K_M.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    for path in [
        tiny_ggufs["q4_k_m"],
        tiny_ggufs["q4_0"],
        bigger_ggufs["q4_0"],
        bigger_ggufs["f16"],
        synthetic_tiny_gguf,
    ]:
        shutil.copy(path, store)
    bigger = store / bigger_ggufs["q4_0"].name
    assert resolve_model(None) == bigger

    result = run_cli("solve", "What is 2 + 2?", "--max-tokens", "2", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == file_identity(bigger).to_dict()
    shown = run_cli("solve", "What is 2 + 2?", "--max-tokens", "2", "--threads", "1")
    assert shown.returncode == 0 and bigger.name in shown.stderr

    bigger.unlink()
    assert resolve_model(None) == store / tiny_ggufs["q4_k_m"].name


def test_the_same_model_twice_is_refused(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    model = str(tiny_ggufs["q8_0"])
    twice = run_cli("solve", "--file", str(_problems(tmp_path / "p.jsonl")), "--model", model, "--model", model)
    assert twice.returncode == 2 and twice.stdout == ""
    assert _error_lines(twice.stderr) == ["error: the same --model is given twice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]
