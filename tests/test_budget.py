"""Thinking budgets, forced answers and budget sweeps, on a tiny model trained to add with worked steps."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from helpers.arithmetic_task import MATH, converted_pair, problems, trained_pair, write_problems
from helpers.checkpoints import EOS_IDS, load_reference_model
from helpers.cli_runner import MLLM_CPU, run_cli
from mllm_cpu.answers import answers_match, extract_boxed
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list

MAX_TOKENS = 80


@pytest.fixture(scope="module")
def target_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_pair(tmp_path_factory.mktemp("trained"))["target"]


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _solve_file(model: Path, problems_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "solve", "--file", str(problems_file), "--model", str(model), "--threads", "1", "--temperature", "0", *args
    )


def _transformers_answers(questions: list[str]) -> list[str | None]:
    """Greedy answers of the trained target in transformers, prompted by its own chat template."""
    folder = trained_pair()["target"]
    model = load_reference_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    answers = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for question in questions:
            answers.append(_greedy_answer(model, tokenizer, question))
    finally:
        torch.set_num_threads(threads)
    return answers


def _greedy_answer(model: Any, tokenizer: Any, question: str) -> str | None:
    """The boxed answer of a greedy transformers generation for one question."""
    messages = [{"role": "system", "content": MATH.system_prompt}, {"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = prompt["input_ids"]
    with torch.no_grad():
        output = model.generate(
            ids, do_sample=False, max_new_tokens=MAX_TOKENS, eos_token_id=EOS_IDS, pad_token_id=EOS_IDS[0]
        )
    return extract_boxed(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))


def test_accuracy_through_solve_file_equals_transformers(target_gguf: Path, tmp_path: Path) -> None:
    items = problems(16, seed=7)
    problems_file = write_problems(tmp_path / "sums.jsonl", items)
    result = _solve_file(target_gguf, problems_file, "--max-tokens", str(MAX_TOKENS), "--json")
    assert result.returncode == 0, result.stderr
    records = _records(next(tmp_path.glob("sums-results-*.jsonl")))
    reference = _transformers_answers([item.question for item in items])
    assert [record["answer"] for record in records] == reference
    ours = [record["correct"] for record in records]
    theirs = [
        answer is not None and answers_match(answer, str(item.answer))
        for answer, item in zip(reference, items, strict=True)
    ]
    assert ours == theirs
    assert sum(theirs) >= len(items) // 4, "the trained model should solve many sums"
    assert all(record["stop_reason"] == "eos" and not record["forced"] for record in records)


def test_a_budget_below_the_trace_forces_an_answer_in_every_record(target_gguf: Path, tmp_path: Path) -> None:
    items = problems(8, seed=11, terms=(5, 5))
    problems_file = write_problems(tmp_path / "long.jsonl", items)
    budget, answer_tokens = 6, 8
    result = _solve_file(
        target_gguf, problems_file, "--budget", str(budget), "--answer-tokens", str(answer_tokens), "--json"
    )
    assert result.returncode == 0, result.stderr
    records = _records(next(tmp_path.glob("long-results-*-budget6.jsonl")))
    assert len(records) == len(items)
    for record in records:
        assert record["forced"] is True
        assert record["reasoning_tokens"] == budget
        assert 1 <= record["answer_tokens"] <= answer_tokens
        assert record["tokens"] == record["reasoning_tokens"] + record["answer_tokens"]
        assert MATH.answer_cue in str(record["output"])
        assert record["answer"] is not None
        assert record["settings"]["budget"] == budget


def test_budget_sweep_accuracy_rises_with_the_budget_and_resumes(target_gguf: Path, tmp_path: Path) -> None:
    items = problems(16, seed=5, terms=(4, 5))
    problems_file = write_problems(tmp_path / "sweep.jsonl", items)
    result = _solve_file(target_gguf, problems_file, "--budget", "4,60", "--json")
    assert result.returncode == 0, result.stderr
    sweep = json.loads(result.stdout)["sweep"]
    assert [row["budget"] for row in sweep] == [4, 60]
    low, high = sweep
    assert low["forced_share"] == 1.0 and high["forced_share"] == 0.0
    assert high["accuracy"] > low["accuracy"]
    assert high["mean_tokens"] > low["mean_tokens"]
    files = sorted(path.name for path in tmp_path.glob("sweep-results-*.jsonl"))
    assert len(files) == 2 and all("-budget" in name for name in files)

    again = _solve_file(target_gguf, problems_file, "--budget", "4,60")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count(f"resuming: {len(items)} of {len(items)}") == 2
    table_rows = [line for line in again.stdout.splitlines() if re.match(r"^│\s*(4|60)\s*│", line)]
    assert len(table_rows) == 2
    chart = [line for line in again.stdout.splitlines() if re.match(r"^\s*(4|60) \|[#.]+\|", line)]
    assert len(chart) == 2


def test_several_budgets_need_a_problems_file(target_gguf: Path) -> None:
    result = run_cli("solve", "What is 1 + 2?", "--model", str(target_gguf), "--budget", "4,8")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: a budget sweep (several --budget values) needs a .jsonl --file of problems"
    ]
    bad = run_cli("solve", "What is 1 + 2?", "--model", str(target_gguf), "--budget", "many")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--budget" in bad.stderr


@pytest.fixture(scope="module")
def random_gguf(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model: it never ends a forced answer by itself, so Ctrl-C can land inside one."""
    return convert_checkpoint(tiny_checkpoint, parse_quant_list("f32"), tmp_path_factory.mktemp("random"))[
        0
    ].summary.path


def test_ctrl_c_during_a_forced_answer_keeps_a_consistent_record(random_gguf: Path) -> None:
    budget = 8
    process = subprocess.Popen(
        [MLLM_CPU, "solve", "What is 1 + 2?", "--task", "math", "--model", str(random_gguf), "--threads", "1"]
        + ["--temperature", "0", "--budget", str(budget), "--answer-tokens", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + 120
    while MATH.answer_cue.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, "the solve ended before its forced answer"
            seen += chunk
    assert MATH.answer_cue.encode() in seen
    time.sleep(0.3)
    assert process.poll() is None, "the forced answer ended before Ctrl-C"
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 130
    stderr = errors.decode()
    assert "stopped by Ctrl-C" in stderr
    footer = re.search(r"(\d+) tokens: (\d+) reasoning \+ (\d+) answer \(forced\)", stderr)
    assert footer, stderr
    total, reasoning, answer = map(int, footer.groups())
    assert reasoning == budget and answer >= 1 and total == reasoning + answer
    assert "forced at the budget" in (seen + rest).decode() or "no final answer" in (seen + rest).decode()


def test_chat_forces_each_reply_at_the_budget(target_gguf: Path) -> None:
    question = problems(1, seed=13, terms=(5, 5))[0].question
    common = ["chat", "--task", "math", "--model", str(target_gguf), "--threads", "1", "--temperature", "0"]
    result = run_cli(*common, "--budget", "3", input_text=f"{question}\n{question}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(MATH.answer_cue.strip()) == 2
    assert result.stderr.count("reasoning cut at --budget 3 tokens; the answer was forced") == 2
    free = run_cli(*common, input_text=f"{question}\n")
    assert free.returncode == 0, free.stderr
    assert "forced" not in free.stderr
