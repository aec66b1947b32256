"""`solve --endpoint` and `bench --endpoint` against real `mllm-cpu serve` processes on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.cli_runner import MLLM_CPU, error_lines, run_cli
from helpers.serve_process import ServeProcess

MAX_TOKENS = "32"
PROBLEMS = 10


@pytest.fixture(scope="module")
def model(tiny_ggufs: dict[str, Path]) -> Path:
    return tiny_ggufs["q8_0"]


@pytest.fixture(scope="module")
def servers(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServeProcess]]:
    """Two servers of the same file, as two boards would be.

    Each decodes one request at a time: a batch of two sequences sums its attention in another
    order, which flips near-ties of random weights (about one run in five), and this module tests
    the endpoint path, not batching (tests/test_serve_parallel.py does, with the trained model).
    """
    home = tmp_path_factory.mktemp("serve_home")
    args = ("--model", str(model), "--threads", "1", "--parallel", "1")
    processes = [ServeProcess(*args, home=home) for _ in range(2)]
    yield processes
    for process in processes:
        process.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("problems") / "sums.jsonl"
    lines = [
        json.dumps({"id": f"q{n}", "question": f"What is {n} plus {2 * n}?", "answer": f"#### {3 * n}"})
        for n in range(PROBLEMS)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def local_records(model: Path, problems: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The batch solved in-process at temperature 0: what every endpoint run must reproduce."""
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    result = _solve_batch(problems, out, "--model", str(model), "--threads", "1")
    assert result.returncode == 0, result.stderr
    return _records(out)


def _solve_batch(problems: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "solve", "--file", str(problems), "--out", str(out), "--temperature", "0", "--max-tokens", MAX_TOKENS, *args
    )


def _records(path: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_id = {record["id"]: record for record in records}
    assert len(by_id) == len(records), "a problem was written twice"
    return by_id


def _printable_ascii(text: str) -> str:
    """The text's printable ASCII characters.

    Random weights write bytes that are not UTF-8; solve shows them as U+FFFD while
    llama-cpp-python's server drops them, so outputs are compared on the characters both keep.
    """
    return "".join(c for c in text if " " <= c <= "~" or c == "\n")


def _same_results(remote: dict[str, Any], local: dict[str, Any]) -> bool:
    fields = ("kind", "task", "answer", "correct", "stop_reason", "prompt_tokens", "tokens")
    return all(remote[f] == local[f] for f in fields) and _printable_ascii(remote["output"]) == _printable_ascii(
        local["output"]
    )


def _urls(servers: list[ServeProcess]) -> list[str]:
    return [arg for server in servers for arg in ("--endpoint", server.url)]


def test_parallel_batch_over_two_servers_equals_the_local_run(
    servers: list[ServeProcess], problems: Path, local_records: dict[str, dict[str, Any]], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "remote.jsonl"
    result = _solve_batch(problems, out, *_urls(servers), "--parallel", "4")
    assert result.returncode == 0, result.stderr
    remote = _records(out)
    assert remote.keys() == local_records.keys()
    assert [key for key in remote if not _same_results(remote[key], local_records[key])] == []
    identity = remote["q0"]["model"]
    assert identity["model"] == model.stem
    assert identity["endpoint"] == ", ".join(server.url for server in servers)


def test_a_refused_problem_is_reported_and_the_others_are_kept(servers: list[ServeProcess], tmp_path: Path) -> None:
    problems = tmp_path / "mixed.jsonl"
    texts = ["What is 1 plus 2?", "seven " * 5000, "What is 2 plus 4?"]
    problems.write_text("".join(json.dumps({"id": f"m{n}", "question": t}) + "\n" for n, t in enumerate(texts)))
    out = tmp_path / "mixed-results.jsonl"
    result = _solve_batch(problems, out, *_urls(servers), "--parallel", "2")
    assert result.returncode == 2
    lines = error_lines(result)
    assert [line for line in lines if ": not solved: " in line] == [
        line for line in lines if line.startswith("m1: not solved: ") and "HTTP 400" in line
    ]
    assert sum(": not solved: " in line for line in lines) == 1
    assert lines[-1].startswith("error: 1 of 3 problems not solved")
    assert sorted(_records(out)) == ["m0", "m2"]


def test_an_unreachable_endpoint_is_one_error_line(problems: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.jsonl"
    result = _solve_batch(problems, out, "--endpoint", "http://127.0.0.1:9/v1")
    assert result.returncode == 2
    assert error_lines(result) == ["error: http://127.0.0.1:9/v1: cannot connect (is the server running?) (4 attempts)"]
    assert not out.exists()


def test_bench_endpoint_reports_every_column(servers: list[ServeProcess], tmp_path: Path) -> None:
    report = tmp_path / "serving.json"
    result = run_cli("bench", "--endpoint", servers[1].url, "--concurrency", "1,2", "-n", "8", "--out", str(report))
    assert result.returncode == 0, result.stderr
    for column in ("concurrency", "TTFT ms", "decode t/s per request", "aggregate t/s"):
        assert column in result.stdout
    rows = json.loads(report.read_text())["results"]
    assert [row["concurrency"] for row in rows] == [1, 2]
    for row in rows:
        assert len(row["requests"]) == row["concurrency"] and not row["errors"]
        assert row["prompt_tokens"] > 0 and all(r["tokens"] >= 2 for r in row["requests"])
        assert row["ttft_ms"] > 0 and row["decode_ts"] > 0 and row["aggregate_ts"] > 0


def test_killing_a_server_mid_batch_loses_no_record_and_a_rerun_completes(
    servers: list[ServeProcess], problems: Path, local_records: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Runs last: it kills one of the module's servers."""
    doomed = servers[0]
    out = tmp_path / "results.jsonl"
    args = ["solve", "--file", str(problems), "--out", str(out), "--temperature", "0", "--max-tokens", MAX_TOKENS]
    batch = subprocess.Popen(
        [MLLM_CPU, *args, *_urls(servers), "--parallel", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.02)
    doomed.stop(signal.SIGKILL)
    before = _records(out)
    _, stderr = batch.communicate(timeout=300)
    assert batch.returncode in (0, 2), stderr
    after = _records(out)
    assert all(after[key] == record for key, record in before.items())
    rerun = run_cli(*args, *_urls(servers))
    assert rerun.returncode == 0, rerun.stderr
    final = _records(out)
    assert final.keys() == local_records.keys()
    assert all(_same_results(final[key], local_records[key]) for key in final)
