"""Batch solving: grading by record kind, resumable results files, Ctrl-C and kills."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.cli_runner import MLLM_CPU, run_cli
from helpers.forcing import forcing_options
from mllm_cpu.batch import TIMING_FIELDS, BatchProgress, BatchRecord, read_results, run_batch, summarize
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.identity import file_identity
from mllm_cpu.problems import load_problems
from mllm_cpu.sampling import SamplingOptions

HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}
RECORDS: list[dict[str, Any]] = [
    {"question": "Tom has 40 apples and buys 2 more. How many?", "answer": "40 + 2 = 42\n#### 42"},
    {"question": "What is 6 * 7 + 1?", "answer": "#### 43"},
    {"problem": "Compute $6 \\cdot 7$.", "solution": "It is $\\boxed{42}$."},
    HUMANEVAL,
    {"id": "free", "question": "Tell me about the number 42."},
]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _many_problems(path: Path, count: int) -> Path:
    return _write_jsonl(
        path, [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(count)]
    )


def _without_timing(records: list[BatchRecord]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.to_dict().items() if key not in TIMING_FIELDS} for record in records]


@pytest.fixture(scope="module")
def engine(synthetic_tiny_gguf: Path) -> Engine:
    """One thread: the tiny model gains nothing from more, and stays fast when another job holds the cores."""
    return Engine(synthetic_tiny_gguf, threads=1)


def test_records_are_graded_by_kind(engine: Engine, tmp_path: Path) -> None:
    problems = load_problems(_write_jsonl(tmp_path / "mixed.jsonl", RECORDS))
    out = tmp_path / "results.jsonl"
    seen: list[BatchProgress] = []
    records = run_batch(engine, problems, out, options=forcing_options(engine, "\\boxed{42}"), on_record=seen.append)
    by_id = {record.id: record for record in records}
    assert [record.id for record in records] == ["1", "2", "3", "HumanEval/0", "free"]
    assert by_id["1"].correct is True and by_id["1"].answer == "42" and by_id["1"].kind == "gsm8k"
    assert by_id["2"].correct is False
    assert by_id["3"].correct is True and by_id["3"].kind == "math"
    humaneval = by_id["HumanEval/0"]
    assert humaneval.task == "python" and humaneval.correct is False
    assert humaneval.error is not None and "code block" in humaneval.error
    assert by_id["free"].correct is None
    assert read_results(out) == records
    assert [(p.done, p.graded, p.correct) for p in seen] == [(1, 1, 1), (2, 2, 1), (3, 3, 2), (4, 4, 2), (5, 4, 2)]
    assert seen[-1].accuracy == 0.5
    rows = {row.kind: row for row in summarize(records)}
    assert rows["all"].problems == 5 and rows["all"].graded == 4 and rows["all"].accuracy == 0.5
    assert rows["gsm8k"].accuracy == 0.5 and rows["humaneval"].accuracy == 0.0 and rows["plain"].accuracy is None


def test_resume_after_ctrl_c_and_a_torn_line_matches_an_uninterrupted_run(engine: Engine, tmp_path: Path) -> None:
    problems = load_problems(_many_problems(tmp_path / "problems.jsonl", 6))
    options = SamplingOptions(temperature=0.8, seed=7, max_tokens=20)
    whole = run_batch(engine, problems, tmp_path / "whole.jsonl", options=options)

    partial = tmp_path / "partial.jsonl"

    def interrupt_after_two(progress: BatchProgress) -> None:
        if progress.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(engine, problems, partial, options=options, on_record=interrupt_after_two)
    assert [record.id for record in read_results(partial)] == ["q0", "q1"]
    with partial.open("a", encoding="utf-8") as file:
        file.write('{"id": "q2", "kind": "gsm8k", "answ')
    resumed = run_batch(engine, problems, partial, options=options)

    assert _without_timing(resumed) == _without_timing(whole)
    assert _without_timing(read_results(partial)) == _without_timing(read_results(tmp_path / "whole.jsonl"))
    lines = partial.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)


def test_finished_run_is_not_repeated(engine: Engine, tmp_path: Path) -> None:
    problems = load_problems(_many_problems(tmp_path / "problems.jsonl", 2))
    out = tmp_path / "out.jsonl"
    run_batch(engine, problems, out, options=SamplingOptions(seed=1, max_tokens=4))
    before = out.read_bytes()
    calls: list[BatchProgress] = []
    records = run_batch(engine, problems, out, options=SamplingOptions(seed=1, max_tokens=4), on_record=calls.append)
    assert out.read_bytes() == before
    assert calls == [] and len(records) == 2


def test_ctrl_c_in_the_middle_of_a_problem_writes_nothing_for_it(engine: Engine, tmp_path: Path) -> None:
    problems = load_problems(_many_problems(tmp_path / "problems.jsonl", 1))
    out = tmp_path / "out.jsonl"
    options = forcing_options(engine, "\\boxed{0}")

    class InterruptingEngine(Engine):
        def generate(self, *args: Any, **kwargs: Any) -> Any:
            def interrupt(piece: str) -> None:
                raise KeyboardInterrupt

            return super().generate(args[0], args[1], interrupt, **kwargs)

    interrupting = InterruptingEngine(engine.model.path, threads=1)
    with pytest.raises(KeyboardInterrupt):
        run_batch(interrupting, problems, out, options=options)
    assert read_results(out) == []


def test_bad_results_file_and_duplicate_ids(engine: Engine, tmp_path: Path) -> None:
    problems = load_problems(_many_problems(tmp_path / "problems.jsonl", 2))
    out = tmp_path / "out.jsonl"
    run_batch(engine, problems[:1], out, options=SamplingOptions(seed=1, max_tokens=2))
    with out.open("a", encoding="utf-8") as file:
        file.write('not json\n{"id": "q1"}\n')
    with pytest.raises(InputError, match=r"out\.jsonl:2: not a results record"):
        run_batch(engine, problems, out, options=SamplingOptions(seed=1, max_tokens=2))
    out.write_text('{"id": "q0", "kind": "gsm8k", "answer": "0"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"out\.jsonl:1: not a results record of this mllm-cpu \(no model"):
        run_batch(engine, problems, out)
    duplicated = load_problems(
        _write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "question": "a"}, {"id": 1, "question": "b"}])
    )
    with pytest.raises(InputError, match="appears twice"):
        run_batch(engine, duplicated, tmp_path / "dup-out.jsonl")


def test_cli_batch_killed_by_ctrl_c_resumes_to_the_same_file(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    problems_path = _many_problems(tmp_path / "problems.jsonl", 8)
    flags = [
        "--model",
        str(synthetic_tiny_gguf),
        "--threads",
        "1",
        "--seed",
        "3",
        "--max-tokens",
        "64",
        "--temperature",
        "0.9",
    ]
    interrupted = tmp_path / "interrupted.jsonl"
    command = [MLLM_CPU, "solve", "--file", str(problems_path), "--out", str(interrupted), *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not interrupted.exists() or interrupted.read_text().count("\n") < 2):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    finished = read_results(interrupted)
    assert process.returncode == 130, stderr
    assert 2 <= len(finished) < 8
    assert "run the same command again to resume" in stderr
    assert f"{len(finished)} of 8 problems" in stdout

    resumed = run_cli("solve", "--file", str(problems_path), "--out", str(interrupted), *flags)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(finished)} of 8 problems already there" in resumed.stderr
    whole = tmp_path / "whole.jsonl"
    assert run_cli("solve", "--file", str(problems_path), "--out", str(whole), *flags).returncode == 0
    assert _without_timing(read_results(interrupted)) == _without_timing(read_results(whole))
    assert "8 of 8 problems" in resumed.stdout and "accuracy" in resumed.stdout


def test_cli_batch_json_summary(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    problems_path = _write_jsonl(tmp_path / "mixed.jsonl", RECORDS)
    result = run_cli(
        "solve",
        "--file",
        str(problems_path),
        "--model",
        str(synthetic_tiny_gguf),
        "--threads",
        "1",
        "--seed",
        "1",
        "--max-tokens",
        "8",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    results = tmp_path / f"mixed-results-{synthetic_tiny_gguf.stem}.jsonl"
    assert summary["results"] == str(results)
    assert summary["model"] == file_identity(synthetic_tiny_gguf).to_dict()
    assert summary["finished"] == 5 and summary["interrupted"] is False
    assert {row["kind"] for row in summary["summary"]} == {"gsm8k", "math", "humaneval", "plain", "all"}
    assert len(read_results(results)) == 5


def test_cli_batch_rejects_malformed_jsonl(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n{"question": \n', encoding="utf-8")
    result = run_cli("solve", "--file", str(bad), "--model", str(synthetic_tiny_gguf))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bad}:2: bad JSON: Expecting value"]
