"""The request records of `solve` and `bench`: flags that do not go together fail in validate(), before
any file is read or model loaded, with the command's own messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_cpu.bench.request import BenchRequest
from mllm_cpu.core.errors import InputError
from mllm_cpu.solve_request import SolveRequest

PROBLEMS = Path("no-such-folder/problems.jsonl")
"""A batch file that does not exist: validate() never reads it."""


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (SolveRequest(), "give a PROBLEM or --file FILE (one of them)"),
        (SolveRequest(problem="2+2?", file=Path("p.txt")), "give a PROBLEM or --file FILE (one of them)"),
        (
            SolveRequest(file=PROBLEMS, tests=Path("t.py")),
            "--check, --run and --tests are for one problem; a batch grades by its records",
        ),
        (SolveRequest(problem="2+2?", limit=3), "--out and --limit are for a .jsonl batch (--file PROBLEMS.jsonl)"),
        (
            SolveRequest(problem="2+2?", models=("a.gguf", "b.gguf")),
            "--force and several --model are for a .jsonl batch (--file PROBLEMS.jsonl)",
        ),
        (SolveRequest(file=PROBLEMS, models=("a.gguf", "a.gguf")), "the same --model is given twice"),
        (SolveRequest(problem="2+2?", check=" "), "--check is empty: give the expected answer, e.g. --check 42"),
        (SolveRequest(file=PROBLEMS, limit=0), "--limit must be at least 1, got 0"),
        (SolveRequest(file=PROBLEMS, task="java"), "unknown task 'java'"),
        (
            SolveRequest(problem="2+2?", budgets=(256, 1024)),
            "a budget sweep (several --budget values) needs a .jsonl --file of problems",
        ),
        (
            SolveRequest(file=PROBLEMS, budgets=(256, 1024), models=("a.gguf", "b.gguf")),
            "a budget sweep runs one --model; sweep the models one at a time",
        ),
    ],
)
def test_solve_flags_that_do_not_go_together(request_: SolveRequest, message: str) -> None:
    with pytest.raises(InputError) as raised:
        request_.validate()
    assert str(raised.value).startswith(message)


def test_the_first_broken_rule_is_the_one_reported() -> None:
    """Checks run in the command's order: the missing problem before the misplaced --limit."""
    with pytest.raises(InputError, match=r"^give a PROBLEM or --file FILE"):
        SolveRequest(limit=0).validate()


@pytest.mark.parametrize(
    ("request_", "mode"),
    [
        (SolveRequest(problem="2+2?", budgets=(256,)), "one"),
        (SolveRequest(file=Path("problem.txt")), "one"),
        (SolveRequest(file=Path("p.JSONL"), models=("a.gguf", "b.gguf"), budgets=(256,)), "batch"),
        (SolveRequest(file=PROBLEMS, budgets=(256, 1024)), "sweep"),
    ],
)
def test_a_valid_solve_request_names_its_mode(request_: SolveRequest, mode: str) -> None:
    request_.validate()
    assert request_.mode == mode


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (BenchRequest(models=("m.gguf",), json_output=True, md_output=True), "choose one of --json, --csv and --md"),
        (
            BenchRequest(models=("m.gguf",), out_file=Path("report.txt")),
            "--out report.txt: say the format with --json, --csv or --md (or use a .json/.csv/.md name)",
        ),
        (
            BenchRequest(models=("a.gguf", "b.gguf"), draft="d.gguf"),
            "bench --draft DRAFT TARGET: name exactly one target model (no --synthetic, no --endpoint)",
        ),
        (
            BenchRequest(models=("t.gguf",), draft="d.gguf", endpoints=("http://localhost:8080/v1",)),
            "bench --draft DRAFT TARGET: name exactly one target model (no --synthetic, no --endpoint)",
        ),
        (
            BenchRequest(synthetic="140m", endpoints=("http://localhost:8080/v1",)),
            "with --endpoint, name at most one served model (no --synthetic)",
        ),
        (BenchRequest(models=("m.gguf",), quant="q4_0"), "--quant applies to --synthetic models only"),
        (BenchRequest(models=("m.gguf",), threads="two"), "-t/--threads takes comma-separated integers, got 'two'"),
        (BenchRequest(models=("m.gguf",), n_prompt="0", n_gen="0"), "nothing to measure: -p and -n are both 0"),
    ],
)
def test_bench_flags_that_do_not_go_together(request_: BenchRequest, message: str) -> None:
    with pytest.raises(InputError) as raised:
        request_.validate()
    assert str(raised.value) == message


def test_only_the_local_mode_reads_the_test_grid() -> None:
    """-p, -b and the other grid lists are llama-bench's; a drafting or endpoint run leaves them unread."""
    for request in (
        BenchRequest(models=("t.gguf",), draft="d.gguf", n_prompt="x", batch_size="", repetitions=0),
        BenchRequest(endpoints=("http://localhost:8080/v1",), n_prompt="x", batch_size="", repetitions=0),
    ):
        request.validate()
        assert request.mode in ("draft", "endpoint")
    local = BenchRequest(models=("m.gguf",), n_prompt="x", batch_size="", repetitions=0)
    assert local.mode == "local"
    with pytest.raises(InputError, match=r"^-p/--n-prompt takes comma-separated integers, got 'x'$"):
        local.validate()


def test_the_report_format_comes_from_the_flag_or_the_out_suffix() -> None:
    assert BenchRequest(csv_output=True).output_format() == "csv"
    assert BenchRequest(out_file=Path("run.MD")).output_format() == "md"
    assert BenchRequest().output_format() is None
